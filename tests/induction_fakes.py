"""Scriptable fake-LLM behaviour for induction tests and the induction cost benchmark.

`InductionResponder` is a fake-upstream responder: it reads the structured-output schema name and
the prompt, works out which completion is the user's real choice (pairs built by `make_pairs` say
"chosen" / "rejected" in their text), and answers schema-valid JSON. Tests decide per request
text which bootstrap predictions and which judge verdicts are right.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from middleware.models import Message, PreferencePair
from tests.support.fake_upstream.models import Reply

_A_RE = re.compile(r"<completion_a>\n(.*?)\n</completion_a>", re.S)
_REQ_RE = re.compile(r"<conversation>\n\[user\] (.*?)\n", re.S)
_PERSONA_RE = re.compile(r"<persona>\n(.*?)\n</persona>", re.S)
_EXAMPLES_RE = re.compile(r"<example index=")
_CHOICE_REQ_RE = re.compile(r"<choice index=\"\d+\">\nRequest: (.*?)\n", re.S)


def make_pairs(
    user: str, n: int, *, rationale: str | None = None, system: str | None = None
) -> list[PreferencePair]:
    pairs = []
    for i in range(n):
        context = [Message(role="user", content=f"Q{i}")]
        if system:
            context.insert(0, Message(role="system", content=system))
        pairs.append(
            PreferencePair(
                user_id=user,
                context=context,
                chosen=Message(role="assistant", content=f"chosen answer to Q{i}"),
                rejected=Message(role="assistant", content=f"rejected answer to Q{i}"),
                rationale=rationale,
                timestamp=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
            )
        )
    return pairs


class InductionResponder:
    def __init__(
        self,
        *,
        wrong_bootstrap: set[str] | None = None,
        judge_right: Callable[[str, str, int], bool] | None = None,
        persona: Callable[[list[str], str], str] | None = None,
    ) -> None:
        self.wrong_bootstrap = wrong_bootstrap or set()
        # (request, persona text, number of exemplars shown) -> does the judge pick the real choice?
        self.judge_right = judge_right or (lambda request, persona, n: True)
        self.persona = persona or (
            lambda requests, data: "Prefers short direct answers. Seen: " + ",".join(requests)
        )
        self.calls: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> dict[str, Any] | None:
        fmt = body.get("response_format") or {}
        name = (fmt.get("json_schema") or {}).get("name")
        if name is None:
            return None
        self.calls[name] += 1
        self.bodies.append(body)
        data = str(body["messages"][1]["content"])
        if name == "PersonaDraft":
            return {"persona": self.persona(_CHOICE_REQ_RE.findall(data), data)}
        request = _REQ_RE.search(data).group(1)  # type: ignore[union-attr]
        truth = "A" if "chosen answer" in _A_RE.search(data).group(1) else "B"  # type: ignore[union-attr]
        other = "B" if truth == "A" else "A"
        if name == "BootstrapAnswer":
            pick = other if request in self.wrong_bootstrap else truth
            return {
                "reasoning": f"reasoning about {request}",
                "speculations": [f"likes the style of {request}"],
                "preferred": pick,
            }
        if name == "JudgeVerdict":
            persona_match = _PERSONA_RE.search(data)
            persona_text = persona_match.group(1) if persona_match else ""
            right = self.judge_right(request, persona_text, len(_EXAMPLES_RE.findall(data)))
            return {"reasoning": "judged", "preferred": truth if right else other}
        raise AssertionError(f"unexpected schema {name}")

    def slowed(self, delay_s: float) -> Callable[[dict[str, Any]], Reply]:
        """These answers, each after `delay_s` seconds (so a kill or a cancel lands mid-job)."""
        return lambda body: Reply(json=self(body), delay=delay_s)

    def after_503s(self, count: int) -> Callable[[dict[str, Any]], Reply | dict[str, Any] | None]:
        """A 503 for each of the first `count` calls, then these answers."""
        left = [count]

        def respond(body: dict[str, Any]) -> Reply | dict[str, Any] | None:
            if left[0]:
                left[0] -= 1
                return Reply(status=503)
            return self(body)

        return respond
