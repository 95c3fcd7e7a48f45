"""`persona segments learn`: users grouped by their preference data; planted opposite tastes are
recovered as two ordinary segments with their members assigned."""

from __future__ import annotations

import asyncio
import random

import pytest
from typer.testing import CliRunner

from middleware.cli import app
from middleware.models import Message, PreferencePair
from tests.jobs_support import store_services
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import proxy_settings

T = "tenant-a"
TOPICS = [
    "tax forms",
    "sourdough",
    "bike gears",
    "python lists",
    "tomato plants",
    "jet lag",
    "mortgages",
    "chess",
]


def terse(topic: str, rng: random.Random) -> str:
    return f"- {topic}: do {rng.choice(['this', 'that'])} first.\n- Check the label."


def thorough(topic: str, rng: random.Random) -> str:
    return (
        f"Great question about {topic}! There are many considerations worth thinking through carefully, "
        "because context matters a lot here. First, let us take a step back and consider the history and "
        f"the background, then weigh the trade-offs one by one, {rng.choice(['gently', 'slowly'])} and in depth."
    )


def planted(user: str, likes_terse: bool, rng: random.Random, n: int = 8) -> list[PreferencePair]:
    pairs = []
    for i, topic in enumerate(rng.sample(TOPICS, n)):
        short, long = terse(topic, rng), thorough(topic, rng)
        chosen, rejected = (short, long) if likes_terse else (long, short)
        if i == 0:  # one judgement against the user's own taste: real data is noisy
            chosen, rejected = rejected, chosen
        pairs.append(
            PreferencePair(
                user_id=user,
                context=[Message(role="user", content=f"Help me with {topic}")],
                chosen=Message(role="assistant", content=chosen),
                rejected=Message(role="assistant", content=rejected),
            )
        )
    return pairs


def test_two_planted_tastes_are_recovered(
    redis_url: str, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = proxy_settings(redis_url, fake_upstream)
    rng = random.Random(7)
    groups = {f"terse-{i}": True for i in range(6)} | {f"thorough-{i}": False for i in range(6)}
    users = list(groups)
    rng.shuffle(users)

    async def seed_and_read(after: bool) -> dict[str, str | None]:
        async with store_services(settings) as services:
            if not after:
                for user in users:
                    await services.preferences.add_pairs(T, user, planted(user, groups[user], rng))
            return {u: await services.segments.assigned(T, u) for u in users}

    assert set(asyncio.run(seed_and_read(False)).values()) == {None}
    monkeypatch.setenv("PERSONA_REDIS_URL", redis_url)
    result = CliRunner().invoke(app, ["segments", "learn", "--tenant", T, "--k", "2"])
    assert result.exit_code == 0, result.output

    assigned = asyncio.run(seed_and_read(True))
    terse_segments = {assigned[u] for u in users if groups[u]}
    thorough_segments = {assigned[u] for u in users if not groups[u]}
    assert len(terse_segments) == 1 and len(thorough_segments) == 1
    assert terse_segments | thorough_segments == {"learned-1", "learned-2"}

    async def stored() -> list[dict[str, object]]:
        async with store_services(settings) as services:
            return await services.segments.all(T)

    names = [s["name"] for s in asyncio.run(stored())]
    assert names == ["learned-1", "learned-2"]

    too_many = CliRunner().invoke(app, ["segments", "learn", "--tenant", T, "--k", "20"])
    assert too_many.exit_code == 1 and "not enough data" in too_many.output
