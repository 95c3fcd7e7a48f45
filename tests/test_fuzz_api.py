"""Property-based fuzzing of the whole OpenAPI surface (schemathesis strategies driven by hypothesis):
no input makes the service fail with a 500, and every JSON error is OpenAI-shaped (Anthropic-shaped
on /v1/messages)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, RunningProxy


def test_no_input_causes_a_server_error(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    schema = schemathesis.openapi.from_url(f"{proxy.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert any(op.path == "/v1/chat/completions" for op in operations)
    seen: set[tuple[str, str, int]] = set()

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        for operation in operations:
            case = data.draw(operation.as_strategy(), label=f"{operation.method} {operation.path}")
            key = ADMIN_KEY if case.path.startswith("/admin") else APP_KEY_A
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}", "X-Persona-Tenant": "tenant-a"}
            response = case.call(base_url=proxy.url, timeout=10)
            seen.add((case.method, case.path, response.status_code))
            assert response.status_code != 500, (case.method, case.formatted_path, response.text[:500])
            content_type = response.headers.get("content-type", "")
            if response.status_code >= 400 and "json" in content_type and case.path.startswith("/v1/messages"):
                body = response.json()  # the Anthropic Messages API's own error shape
                assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, response.text[:300]
            elif response.status_code >= 400 and "json" in content_type:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, response.text[:300]

    fuzz()
    assert len({(m, p) for m, p, _ in seen}) == len(operations)
