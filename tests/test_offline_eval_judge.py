"""`persona eval --scorer judge`: per-user induction on the train split, persona-informed judge, both orders.

The fake upstream plays an LLM whose judge follows the persona: when the persona says the person
prefers short answers it picks the shorter completion, otherwise it always answers "A" (pure
position bias, which the both-orders rule must count wrong). Its bootstrap step always guesses the
shorter answer, so only users who really prefer short answers get consistent traces.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest

from middleware.config import Settings
from middleware.errors import UpstreamError
from middleware.evaluation.cli_eval import run_eval
from middleware.evaluation.offline import evaluate
from middleware.evaluation.scorers import make_scorer
from middleware.models import Message, PreferencePair
from tests.support.fake_upstream import FakeUpstream

MODEL = "fake-judge"
_A_RE = re.compile(r"<completion_a>\n(.*?)\n</completion_a>", re.S)
_B_RE = re.compile(r"<completion_b>\n(.*?)\n</completion_b>", re.S)
_PERSONA_RE = re.compile(r"<persona>\n(.*?)\n</persona>", re.S)


class PersonaFollowingLLM:
    """Bootstrap: guesses the shorter answer. Synthesis: "Prefers short answers." Judge: see module doc."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.judge_personas: list[str] = []

    def __call__(self, body: dict[str, Any]) -> dict[str, Any] | None:
        name = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
        if name is None:
            return None
        self.calls[name] = self.calls.get(name, 0) + 1
        prompt = str(body["messages"][1]["content"])
        if name == "PersonaDraft":
            return {"persona": "Prefers short answers, straight to the point."}
        a, b = _A_RE.search(prompt), _B_RE.search(prompt)
        assert a is not None and b is not None
        shorter = "A" if len(a.group(1)) <= len(b.group(1)) else "B"
        if name == "BootstrapAnswer":
            return {"reasoning": "short is better", "speculations": ["busy"], "preferred": shorter}
        if name == "JudgeVerdict":
            match = _PERSONA_RE.search(prompt)
            persona = match.group(1) if match else ""
            self.judge_personas.append(persona)
            pick = shorter if "prefers short" in persona.lower() else "A"
            return {"reasoning": "judged", "preferred": pick}
        raise AssertionError(f"unexpected schema {name}")


def _pair(user: str, i: int, chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "user_id": user,
        "context": [{"role": "user", "content": f"question {i} from {user}"}],
        "chosen": {"role": "assistant", "content": chosen},
        "rejected": {"role": "assistant", "content": rejected},
        "timestamp": f"2024-01-01T00:00:{i:02d}Z",
    }


def _rows(n_short: int = 10, n_long: int = 10, n_tiny: int = 4) -> list[dict[str, Any]]:
    long = "a long, winding answer that covers every angle, caveat and footnote, number"
    rows = [_pair("shorty", i, f"ok {i}", f"{long} {i}") for i in range(n_short)]
    rows += [_pair("longy", i, f"{long} {i}", f"ok {i}") for i in range(n_long)]
    rows += [_pair("tiny", i, f"ok {i}", f"{long} {i}") for i in range(n_tiny)]
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _by_user(rows: list[dict[str, Any]]) -> dict[str, list[PreferencePair]]:
    out: dict[str, list[PreferencePair]] = {}
    for row in rows:
        pair = PreferencePair.model_validate(row)
        out.setdefault(pair.user_id, []).append(pair)
    return out


def _settings(fake: FakeUpstream, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream_api_base": fake.base_url,
        "upstream_api_key": "sk-upstream",
        "induction_model": MODEL,
        "embedded_redis": False,
        "upstream_retry_initial_s": 0.01,
        "upstream_retry_max_s": 0.05,
    }
    return Settings(**{**values, **changes})


def test_judge_beats_default_judge_and_falls_back_without_a_persona(
    fake_upstream: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    llm = PersonaFollowingLLM()
    fake_upstream.responder = llm
    data = _write(tmp_path / "pairs.jsonl", _rows())
    out = tmp_path / "report.json"

    result = run_eval(
        data, "judge", None, out, tmp_path / "plot.png", min_pairs=4, progress=False,
        settings=_settings(fake_upstream),
    )  # fmt: skip

    report = json.loads(out.read_text())
    assert result == report
    acc = {r["user"]: r for r in report["per_user"]}
    # shorty: persona induced from its train split, the judge follows it in both orders.
    assert acc["shorty"]["accuracy"] == 1.0 and acc["shorty"]["n_train"] == 7
    # longy (no trace agrees: no persona) and tiny (3 train pairs < 5) fall back to the bare judge,
    # whose "always A" is right in one order only: wrong. The default judge is wrong everywhere.
    assert acc["longy"]["accuracy"] == 0.0 and acc["tiny"]["accuracy"] == 0.0
    assert all(r["global_accuracy"] == 0.0 for r in report["per_user"])
    assert report["baseline"] == "judge-default" and report["global_mean_accuracy"] == 0.0
    assert report["mean_accuracy"] == pytest.approx(1 / 3) and report["gain"] == pytest.approx(1 / 3)
    assert report["users_improved"] == 1 and report["users_worse"] == 0

    judge = report["notes"]["judge"]
    assert judge["users_induced"] == 1 and judge["users_fallback"] == 2
    assert judge["fallback_reasons"] == {"no_consistent_traces": 1, "not_enough_data": 1}
    assert judge["per_user"]["shorty"]["status"] == "induced"
    assert judge["per_user"]["shorty"]["persona_chars"] > 0
    assert judge["per_user"]["tiny"]["status"] == "fallback"
    assert judge["per_user"]["tiny"]["induction"]["calls"] == 0  # refused before any LLM call
    # Only the train split reached induction: 7 of shorty's 10 pairs -> 5 bootstrap + 2 validation.
    assert judge["per_user"]["shorty"]["induction"]["calls"] == 5 + 1 + 2 * 2 * 5
    # Calls and tokens in the report are what the fake upstream received.
    base = report["notes"]["baseline_judge"]
    assert base["personalized"] is False and base["users_induced"] == 0 and base["users_fallback"] == 0
    assert base["calls"] == base["judging"]["calls"] == 2 * (3 + 3 + 1)
    llm_totals = report["notes"]["llm"]
    assert llm_totals["model"] == MODEL
    assert llm_totals["calls"] == judge["calls"] + base["calls"] == len(fake_upstream.chat_requests)
    assert llm_totals["total_tokens"] > 0
    assert llm_totals["total_tokens"] == llm_totals["prompt_tokens"] + llm_totals["completion_tokens"]
    assert llm.calls["BootstrapAnswer"] == 10  # shorty 5 + longy 5 (tiny never got there)
    # The default judge never sees a persona; the personalized one only for the induced user.
    assert llm.judge_personas.count("(no description available)") == 14 + 8
    assert all(r.body["model"] == MODEL for r in fake_upstream.chat_requests)
    printed = capsys.readouterr().out
    assert "judge-default: 0.000" in printed and "1 fell back" not in printed and "2 fell back" in printed


def test_both_orders_rule_for_pairwise_scorers() -> None:
    """A pair counts only with "A" then "B": ties/position bias and failed calls are wrong."""
    picks: list[tuple[Literal["A", "B"] | None, Literal["A", "B"] | None]] = [
        ("A", "A"), ("B", "B"), ("B", "A"), (None, "B"), ("A", None), ("A", "B"),
    ]  # fmt: skip

    class Scripted:
        def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
            return None

        def judge_orders(
            self, test_by_user: dict[str, list[PreferencePair]], *, progress: bool = False
        ) -> dict[str, list[tuple[Literal["A", "B"] | None, Literal["A", "B"] | None]]]:
            return {u: picks[: len(ps)] for u, ps in test_by_user.items()}

    pairs = [
        PreferencePair(
            user_id="u",
            context=[Message(role="user", content=f"q{i}")],
            chosen=Message(role="assistant", content="c"),
            rejected=Message(role="assistant", content="r"),
        )
        for i in range(20)
    ]
    report = evaluate({"u": pairs}, Scripted(), progress=False, train_fraction=0.7)
    assert report.per_user[0].n_test == 6 and report.per_user[0].correct == 1


def test_budget_and_data_fallbacks_are_counted(fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = PersonaFollowingLLM()
    scorer = make_scorer("judge", settings=_settings(fake_upstream), max_calls_per_user=6)
    report = evaluate(_by_user(_rows(n_long=0)), scorer, min_pairs=4, progress=False, scorer_name="judge")
    runs = scorer.summary()["per_user"]
    # shorty's induction needs at least 10 calls (> 6): refused up front, judged without a persona.
    assert runs["shorty"]["status"] == "fallback" and runs["shorty"]["reason"] == "budget_exceeded"
    assert runs["shorty"]["induction"]["calls"] == 0
    assert runs["tiny"]["reason"] == "not_enough_data"
    assert scorer.summary()["users_fallback"] == 2
    assert report.mean_accuracy == 0.0
    assert len(fake_upstream.chat_requests) == 2 * (3 + 1)  # judging only


def test_unreachable_llm_is_an_error_not_zero_accuracy(tmp_path: Path) -> None:
    settings = Settings(
        upstream_api_base="http://127.0.0.1:9/v1", induction_model=MODEL, upstream_max_attempts=1,
        embedded_redis=False,
    )  # fmt: skip
    scorer = make_scorer("judge-default", settings=settings)
    with pytest.raises(UpstreamError):
        evaluate(_by_user(_rows(n_long=0, n_tiny=0)), scorer, min_pairs=4, progress=False)


def test_judge_scorers_need_llm_settings() -> None:
    with pytest.raises(Exception, match="needs an LLM"):
        make_scorer("judge-default")


def test_persona_eval_judge_cli_end_to_end(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    fake_upstream.responder = PersonaFollowingLLM()
    data = _write(tmp_path / "pairs.jsonl", _rows())
    out = tmp_path / "report.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")},
        "PERSONA_UPSTREAM_API_BASE": fake_upstream.base_url,
        "PERSONA_UPSTREAM_API_KEY": "sk-upstream",
        "PERSONA_EMBEDDED_REDIS": "false",
    }
    persona = Path(sys.executable).with_name("persona")
    command = [str(persona), "eval", "--data", str(data), "--scorer", "judge", "--model", MODEL]
    proc = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["scorer"] == "judge" and report["baseline"] == "judge-default"
    assert report["n_users"] == 2 and report["n_users_skipped"] == 1  # tiny < 10 pairs
    assert report["mean_accuracy"] == pytest.approx(0.5) and report["gain"] == pytest.approx(0.5)
    assert report["notes"]["llm"]["calls"] == len(fake_upstream.chat_requests) > 0
    assert report["notes"]["judge"]["users_fallback"] == 1
    assert "judge: mean per-user accuracy 0.500" in proc.stdout
    assert "LLM fake-judge:" in proc.stdout
