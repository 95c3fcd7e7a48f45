"""The official openai Node SDK (pinned in tests/node/package-lock.json) against the proxy:
responses.create and chat.completions.create, streamed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.dropin import PERSONA_MARK, give_persona
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, RunningProxy

NODE_DIR = Path(__file__).resolve().parent / "node"


def node_ready() -> bool:
    """node and npm present; `npm ci` installs the pinned SDK when node_modules is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return False
    if not (NODE_DIR / "node_modules" / "openai").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    return True


# CI must run it (scripts/bootstrap.sh installs nodejs and npm); a developer without node may skip it.
@pytest.mark.skipif(
    shutil.which("node") is None and not os.environ.get("CI"),
    reason="node is not installed (apt-get install nodejs npm)",
)
def test_node_sdk_streams_responses_and_chat(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    assert node_ready()
    give_persona(proxy, "node|user 1")
    done = subprocess.run(
        ["node", "stream.mjs", proxy.v1, APP_KEY_A, "node|user 1"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["responseTypes"][0] == "response.created" and seen["responseTypes"][-1] == "response.completed"
    assert seen["responseText"] == "fake answer to: node responses"
    assert seen["completedInstructions"] == "Node app."
    assert seen["chatText"] == "fake answer to: node chat"
    assert PERSONA_MARK not in seen["raw"]
    responses = [r.body for r in fake_upstream.requests if r.path == "/v1/responses"]
    assert responses[-1]["instructions"].startswith("Node app.\n\n") and responses[-1]["instructions"].count(PERSONA_MARK) == 1
    assert str(fake_upstream.chat_requests[-1].body["messages"]).count(PERSONA_MARK) == 1
