"""Rerankers are opt-in: `X-Persona-Reranker` may only name rerankers the operator enabled, and a
refused name loads nothing (the `lora` reranker would import torch into the proxy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from middleware.config import Settings
from middleware.errors import InvalidRequest
from middleware.rerank.registry import require_enabled
from tests.support.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent

# A proxy in a fresh interpreter: the app with its lifespan (entry points registered), one rerank
# call naming `lora`, then whether torch was imported at any point.
PROBE = """
import json, sys
from fastapi.testclient import TestClient
from middleware.app import create_app
from middleware.config import Settings

settings = Settings(redis_url=sys.argv[1], upstream_api_base=sys.argv[2], embedded_redis=False)
with TestClient(create_app(settings)) as client:
    registered = client.app.state.services.rerankers.names()
    answer = client.post(
        "/v1/chat/completions",
        headers={"X-Persona-Mode": "rerank", "X-Persona-Reranker": "lora"},
        json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "user": "u1"},
    )
print(json.dumps({"status": answer.status_code, "body": answer.json(), "registered": registered,
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def test_lora_not_enabled_is_a_400_and_torch_is_never_imported(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env = {k: v for k, v in env.items() if not k.startswith("PERSONA_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, redis_url, fake_upstream.base_url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "lora" in result["registered"]  # the plugin is installed, only not enabled
    assert result["status"] == 400
    assert result["body"]["error"]["code"] == "reranker_not_enabled"
    assert result["body"]["error"]["type"] == "invalid_request_error"
    assert result["torch"] is False and result["transformers"] is False
    assert fake_upstream.requests == []  # refused before any candidate was generated


def test_enabled_list_and_the_operators_default_are_allowed() -> None:
    settings = Settings(rerankers_enabled=["judge", "lora"], embedded_redis=False)
    assert require_enabled(settings, "lora") == "lora"
    assert Settings(embedded_redis=False).rerankers_enabled == ["judge"]
    only_default = Settings(reranker="custom", embedded_redis=False)
    assert require_enabled(only_default, "custom") == "custom"
    with pytest.raises(InvalidRequest, match="not enabled"):
        require_enabled(only_default, "lora")
