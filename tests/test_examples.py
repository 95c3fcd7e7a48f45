"""The examples run as written against a live proxy (so they cannot rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, RunningProxy

ROOT = Path(__file__).resolve().parents[1]


def run_example(proxy: RunningProxy, *args: str) -> str:
    env = {
        **os.environ,
        "PERSONA_BASE_URL": proxy.v1,
        "PERSONA_APP_KEY": APP_KEY_A,
        "PERSONA_ADMIN_KEY": ADMIN_KEY,
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_base_url_swap(proxy: RunningProxy) -> None:
    out = run_example(proxy, "examples/base_url_swap.py", "--user", "u1", "--model", "fake-model", "--prompt", "hi")
    assert out.splitlines()[0] == "fake answer to: hi"
    assert "[persona version: none" in out


def test_sdk_personas(proxy: RunningProxy) -> None:
    out = run_example(proxy, "examples/sdk_personas.py", "--user", "u2", "--tenant", "tenant-a", "--model", "fake-model")
    assert "stored persona version 1" in out
    assert "inject: fake answer to: Explain DNS." in out
    assert "rerank: fake answer to: Explain DNS." in out
    assert "version 1:" in out and "current=True" in out


def test_collect_preferences(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = lambda body: (
        f"answer at temperature {body['temperature']} as {body['messages'][0]['role']} to {body['messages'][-1]['content']}"
    )
    out = run_example(
        proxy, "examples/collect_preferences.py", "--user", "u3", "--model", "fake-model",
        "--instruction", "Be brief.", "--prompt", "first", "--prompt", "second", "--auto",
    )
    assert out.count("stored the judgement and 5 preference pairs") == 2
    assert "answer at temperature 0.1 as assistant to second" in out


def test_online_evaluation(proxy: RunningProxy, fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    from tests.support.online_eval import give_personas, persona_responder

    fake_upstream.responder = persona_responder()
    give_personas(proxy, ("alice", "bob"))
    plot = tmp_path / "evaluation.png"
    out = run_example(
        proxy, "examples/online_evaluation.py", "--tenant", "tenant-a", "--users", "alice", "bob",
        "--model", "fake-model", "--plot", str(plot), "--auto",
    )
    assert out.startswith("evaluation run ")
    assert out.count("answer A ---") == 4 and "answer for alice" in out and "plain answer" in out
    assert "own vs baseline: p = " in out
    wins = {line.split(":")[0].strip(): int(line.split(":")[1].split()[0]) for line in out.splitlines()
            if line.strip().startswith(("own:", "other:", "baseline:"))}
    assert sum(wins.values()) == 4
    assert plot.read_bytes().startswith(b"\x89PNG")
