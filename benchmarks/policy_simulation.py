"""The auto mode's policy against simulated users: regret, and how fast it fits a new or changed user.

    .venv/bin/python benchmarks/policy_simulation.py [--runs 3] [--rounds 160] [--users 24] [--out DIR]

A `persona serve` process with `PERSONA_POLICY` in auto mode over four arms (`off`, `inject`,
`inject-no-exemplars`, `rerank:judge`), in front of the suite's fake upstream in its own process (the
rerank arm's four candidates and its judge calls are answered at once), on a private redis-server. Simulated users of one tenant
each have a reward probability per arm: a third like `off` best, a third `inject`, a third the rerank
arm; each user's table is jittered. A third of them change their mind halfway (their table becomes
another type's). A second cohort of new users joins halfway, when the tenant's prior has learned.

Every interaction is a real chat call (`X-Persona-Mode: auto`): the arm comes back in
`x-persona-arm`, the user draws a 0/1 reward with that arm's probability and the reward is sent
back: through `POST /v1/feedback` (a thumbs up or down on the answer's `x-persona-response-id`) when
the proxy has that route, else through `POST /admin/users/{user}/policy/rewards`.

Reported (median over runs, with the spread): the policy's mean reward per interaction and its
cumulative regret against always-`inject`, the best single arm for the whole tenant (in hindsight),
uniform random and the per-user oracle (regrets use each arm's expected reward, not the draws); the
interactions a user needs before the policy's reward (mean over the next 10) is within 10 % of
their oracle: new users of a cold tenant, new users of a warm tenant, and users after a change of
mind. A PNG of the cumulative regret curves goes to `--out` (default benchmarks/out/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from benchmarks import _harness as h
from tests.support.redis_server import RedisServer

ARMS = ("off", "inject", "inject-no-exemplars", "rerank:judge")
# Reward probability per arm for each type of user (the order of ARMS).
TYPES = {
    "likes-off": (0.80, 0.45, 0.50, 0.35),
    "likes-inject": (0.30, 0.80, 0.65, 0.55),
    "likes-rerank": (0.30, 0.50, 0.45, 0.85),
}
WINDOW = 10  # "within 10 % of the oracle": the mean expected reward of the next WINDOW interactions
TENANT = "bench"  # the harness maps its app key to this tenant


@dataclass
class SimUser:
    name: str
    kind: str
    table: tuple[float, ...]
    joins: int  # the round it first asks
    changes_at: int | None = None  # the round its table becomes `later`
    later: tuple[float, ...] | None = None
    expected: list[float] = field(default_factory=list)  # the expected reward of each chosen arm
    oracle: list[float] = field(default_factory=list)
    rows: list[tuple[float, ...]] = field(default_factory=list)  # its table at each interaction

    def table_at(self, round_: int) -> tuple[float, ...]:
        if self.changes_at is not None and self.later is not None and round_ >= self.changes_at:
            return self.later
        return self.table


def make_users(rng: random.Random, count: int, rounds: int) -> list[SimUser]:
    kinds = list(TYPES)
    half = rounds // 2
    users = []
    for i in range(count):
        kind = kinds[i % 3]
        jitter = tuple(min(0.95, max(0.05, p + rng.uniform(-0.05, 0.05))) for p in TYPES[kind])
        late = i >= count * 2 // 3  # the last third joins halfway (a warm tenant prior)
        user = SimUser(f"sim-{i}", kind, jitter, joins=half if late else 0)
        if not late and i % 2 == 1:  # half of the early users (a third of all) change their mind halfway
            other = kinds[(i + 1 + i // 3) % 3]
            other = other if other != kind else kinds[(kinds.index(kind) + 1) % 3]
            user.changes_at, user.later = (
                half,
                tuple(min(0.95, max(0.05, p + rng.uniform(-0.05, 0.05))) for p in TYPES[other]),
            )
        users.append(user)
    return users


async def interact(
    http: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    user: SimUser,
    round_: int,
    rng: random.Random,
    feedback: bool,
) -> None:
    response = await http.post(
        "/v1/chat/completions",
        json={
            "model": "fake-model",
            "messages": [{"role": "user", "content": f"question {round_}"}],
            "user": user.name,
        },
        headers={"X-Persona-Mode": "auto"},
    )
    response.raise_for_status()
    arm = response.headers["x-persona-arm"]
    table = user.table_at(round_)
    p = table[ARMS.index(arm)]
    user.expected.append(p)
    user.oracle.append(max(table))
    user.rows.append(table)
    value = 1.0 if rng.random() < p else 0.0
    # A 503 (Redis slow on a loaded machine) is retried, and a 404 while the answer's feedback record,
    # written in the background after the answer, has not landed yet.
    for _ in range(40):
        if feedback:
            sent = await http.post(
                "/v1/feedback",
                json={
                    "response_id": response.headers["x-persona-response-id"],
                    "signal": "thumbs_up" if value else "thumbs_down",
                },
                headers={"X-Persona-User": user.name},
            )
        else:
            sent = await admin.post(
                f"/admin/users/{user.name}/policy/rewards", json={"arm": arm, "reward": value}
            )
        if sent.status_code not in (404, 503):
            break
        await asyncio.sleep(0.05)
    sent.raise_for_status()


def needed(expected: list[float], oracle: list[float], start: int = 0) -> int | None:
    """Interactions from `start` until the policy's mean expected reward over the next WINDOW is within
    10 % of the oracle's; None if never."""
    for t in range(start, len(expected) - WINDOW + 1):
        if statistics.fmean(expected[t : t + WINDOW]) >= 0.9 * statistics.fmean(oracle[t : t + WINDOW]):
            return t - start
    return None


async def simulate(url: str, rounds: int, count: int, seed: int, feedback: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    users = make_users(rng, count, rounds)
    order: list[tuple[SimUser, int]] = []  # every interaction, in the order it happened (by round)
    limits = httpx.Limits(max_connections=64)
    async with (
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {h.APP_KEY}"}, timeout=30, limits=limits
        ) as http,
        httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {h.ADMIN_KEY}", "X-Persona-Tenant": TENANT},
            timeout=30,
            limits=limits,
        ) as admin,
    ):
        for round_ in range(rounds):
            active = [u for u in users if u.joins <= round_]
            await asyncio.gather(*(interact(http, admin, u, round_, rng, feedback) for u in active))
            order.extend((u, len(u.expected) - 1) for u in active)
    return summarize(users, order, rounds)


def summarize(users: list[SimUser], order: list[tuple[SimUser, int]], rounds: int) -> dict[str, Any]:
    policy = [u.expected[i] for u, i in order]
    rows = [u.rows[i] for u, i in order]
    totals = [sum(row[k] for row in rows) for k in range(len(ARMS))]
    best = max(range(len(ARMS)), key=lambda k: totals[k])
    baselines = {
        "always-inject": [row[ARMS.index("inject")] for row in rows],
        f"best single arm ({ARMS[best]})": [row[best] for row in rows],
        "uniform random": [statistics.fmean(row) for row in rows],
        "per-user oracle": [max(row) for row in rows],
    }
    curves = {
        name: _cumulative([b - p for b, p in zip(values, policy, strict=True)])
        for name, values in baselines.items()
    }
    half = rounds // 2
    cold = [needed(u.expected, u.oracle) for u in users if u.joins == 0 and u.changes_at is None]
    cold += [needed(u.expected[:half], u.oracle[:half]) for u in users if u.changes_at is not None]
    warm = [needed(u.expected, u.oracle) for u in users if u.joins > 0]
    changed = [needed(u.expected, u.oracle, start=half) for u in users if u.changes_at is not None]
    return {
        "interactions": len(policy),
        "mean_reward": {
            "policy": statistics.fmean(policy),
            **{name: statistics.fmean(values) for name, values in baselines.items()},
        },
        "regret": {name: curve[-1] for name, curve in curves.items()},
        "curves": curves,
        "needed": {
            "new user, cold tenant": cold,
            "new user, warm tenant": warm,
            "after a change of mind": changed,
        },
    }


def _cumulative(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def typical(counts: list[int | None]) -> tuple[float, float, int]:
    """(median, 90th percentile, how many never got there) of interactions needed (None: never)."""
    reached = sorted(c for c in counts if c is not None)
    never = len(counts) - len(reached)
    if not reached:
        return float("nan"), float("nan"), never
    return statistics.median(reached), reached[min(len(reached) - 1, int(0.9 * len(reached)))], never


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in results[0]["curves"]:
        for n, result in enumerate(results):
            ax.plot(
                result["curves"][name],
                label=name if n == 0 else None,
                color=f"C{list(results[0]['curves']).index(name)}",
                alpha=0.8,
            )
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("interactions (all users, in order)")
    ax.set_ylabel("cumulative regret of the policy vs … (expected reward)")
    ax.set_title("Auto mode: policy vs baselines (below 0: the policy did better)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="independent runs (seeds), each on a fresh Redis")
    parser.add_argument("--rounds", type=int, default=120, help="interactions per early user")
    parser.add_argument("--users", type=int, default=18)
    parser.add_argument(
        "--discount", type=float, default=None, help="PERSONA_POLICY discount (default: the setting's)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()

    results = []
    fields: dict[str, Any] = {"mode": "auto", "arms": list(ARMS)}
    if args.discount is not None:
        fields["discount"] = args.discount
    settings = {
        "policy": json.dumps({"default": fields}),
        "rerankers_enabled": json.dumps(["judge"]),
        # The simulation measures what the policy learns: a persona read slowed down by this machine's
        # load must not fall back to the default arm (the latency of the read is another benchmark's).
        "persona_read_timeout_s": "2",
        "redis_socket_timeout_s": "5",
    }
    with h.fake_upstream() as upstream:
        for run in range(args.runs):
            with RedisServer() as redis_server, h.proxy(redis_server.url, upstream, **settings) as url:
                feedback = "/v1/feedback" in httpx.get(f"{url}/openapi.json").json()["paths"]
                started = time.monotonic()
                result = asyncio.run(simulate(url, args.rounds, args.users, seed=run, feedback=feedback))
                result["seconds"] = time.monotonic() - started
                result["rewards_via"] = "/v1/feedback" if feedback else "/admin/users/{user}/policy/rewards"
            results.append(result)
            print(
                f"run {run + 1}: {result['interactions']} interactions in {result['seconds']:.1f} s, "
                f"rewards via {result['rewards_via']}",
                flush=True,
            )

    print(
        f"\n{args.runs} runs, {args.users} users ({args.users // 3} join halfway, {args.users // 3} change their mind "
        f"halfway), {args.rounds} rounds, arms {', '.join(ARMS)}"
    )
    print("mean expected reward per interaction, median (min, max) over runs:")
    for name in results[0]["mean_reward"]:
        print(f"  {name:<40}{spread([r['mean_reward'][name] for r in results])}")
    print(
        "cumulative regret of the policy (baseline reward - policy reward, summed; negative: the policy did better):"
    )
    for name in results[0]["regret"]:
        print(f"  vs {name:<37}{spread([r['regret'][name] for r in results])}")
    print(f"interactions until the policy is within 10 % of the user's oracle (mean of the next {WINDOW}):")
    for name in results[0]["needed"]:
        per_run = [typical(r["needed"][name]) for r in results]
        print(
            f"  {name:<30} median {statistics.median(m for m, _, _ in per_run):.0f}, "
            f"p90 {statistics.median(p for _, p, _ in per_run):.0f} (runs: "
            + ", ".join(f"{m:.0f}/{p:.0f}" for m, p, _ in per_run)
            + f"); not there by the end of the run: {sum(n for _, _, n in per_run)} of {sum(len(r['needed'][name]) for r in results)}"
        )
    best_name = next(n for n in results[0]["regret"] if n.startswith("best single arm"))
    beats = all(r["regret"][best_name] < 0 for r in results)
    recover = [typical(r["needed"]["after a change of mind"]) for r in results]
    recovers = all(m <= 50 for m, _, _ in recover)
    print(
        f"target: the policy beats the best single arm: {'met' if beats else 'NOT met'}; "
        f"recovers within 50 interactions after a change of mind (median of the users, every run): {'met' if recovers else 'NOT met'}"
    )
    png = args.out / "policy_simulation.png"
    plot(results, png)
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
