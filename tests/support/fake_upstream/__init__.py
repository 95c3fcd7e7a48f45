"""A fake OpenAI-compatible LLM server for tests and benchmarks.

A raw ASGI app (no framework, orjson for JSON) so that it is not the bottleneck of a load run.

In tests::

    with FakeUpstream() as fake:
        fake.script(Reply(status=429), Reply(content="hello"))
        client = openai.OpenAI(base_url=fake.base_url, api_key="x")

For benchmarks, in its own process::

    python -m tests.support.fake_upstream --port 9100 [--delay-ms 20]

Modules: ``models`` (Reply, RecordedRequest), ``schema`` (an instance of a JSON schema for structured
output), ``responses`` (completion, error and embedding bodies), ``sse`` (stream events), ``app``
(the ASGI app), ``server`` (FakeUpstream in a thread, and the command line).
"""

from tests.support.fake_upstream.app import make_app
from tests.support.fake_upstream.models import RecordedRequest, Reply, Responder
from tests.support.fake_upstream.schema import schema_instance
from tests.support.fake_upstream.server import FakeUpstream, main

__all__ = ["FakeUpstream", "RecordedRequest", "Reply", "Responder", "main", "make_app", "schema_instance"]
