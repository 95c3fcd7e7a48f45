"""Failover keeps the promises, on a real Redis Cluster (3 masters + 3 replicas, node timeout 2 s)
and a real Sentinel group (1 master, 1 replica, 3 sentinels): the master holding the user's data is
killed with SIGKILL under load (tests/support/failover.py).

- chat and Responses keep answering (fail open: without persona during the window), with persona
  again within 15 s of the kill, nothing of ours restarted;
- preference writes answer 201 or 503 (never anything else), 503 during the window, 201 after;
  every acknowledged write is found afterwards (each waited for a replica: PERSONA_REDIS_WAIT_REPLICAS);
- a refresh job running through the failover completes (retried), and the worker stays up.

Each test takes well under a minute; they run in CI with the rest of the suite.
"""

from __future__ import annotations

import asyncio
import faulthandler
from collections.abc import Iterator

import pytest

from tests.support.failover import cluster_kill, drill, sentinel_kill
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_topologies import LocalCluster, SentinelGroup

pytestmark = [pytest.mark.topology, pytest.mark.slow]
PERSONA_BACK_WITHIN_S = 15.0
DRILL_LIMIT_S = 240.0  # a drill takes 20-40 s alone, up to ~100 s beside the rest of the suite; past this it failed (it never holds CI up)


@pytest.fixture(autouse=True)
def stacks_if_stuck() -> Iterator[None]:
    """Print every thread's stack should a drill outlive its limit by far (a blocking call that
    asyncio.wait_for cannot interrupt), so a CI log says where."""
    faulthandler.dump_traceback_later(DRILL_LIMIT_S + 60, exit=False)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def check_promises(figures_summary: dict[str, object], refused: int, other: list[int]) -> None:
    s = figures_summary
    assert s["window_s"] is not None and float(s["window_s"]) <= PERSONA_BACK_WITHIN_S, s  # type: ignore[arg-type]
    assert s["chat_success_in_window"] == 1.0 and s["chat_success_overall"] == 1.0, s
    assert int(s["chat_calls_in_window"]) > 0, s  # type: ignore[call-overload]
    assert other == [], s
    assert refused > 0, s  # the writes during the window were refused, not silently taken
    assert s["writes_back_s"] is not None, s
    assert s["writes_found"] == s["writes_acknowledged"] and int(s["writes_acknowledged"]) > 0, s  # type: ignore[call-overload]
    assert s["job"] == "complete" and s["worker_alive"] is True, s
    assert s["worker_stop_requests"] is not None, s  # stopped when asked (the summary says after how many)


async def test_a_cluster_master_killed_under_load(
    fresh_cluster: LocalCluster, redis_url: str, fake_upstream: FakeUpstream
) -> None:
    kill, restart = cluster_kill(fresh_cluster)
    figures = await asyncio.wait_for(
        drill("cluster", fresh_cluster.url, redis_url, fake_upstream, kill, restart), DRILL_LIMIT_S
    )
    print(figures.summary())
    check_promises(figures.summary(), figures.writes_refused, figures.writes_other)


async def test_a_sentinel_master_killed_under_load(
    fresh_sentinel_group: SentinelGroup, redis_url: str, fake_upstream: FakeUpstream
) -> None:
    """The data on a Sentinel group, the job queue on a server beside it (as with a cluster)."""
    kill, restart = sentinel_kill(fresh_sentinel_group)
    url = fresh_sentinel_group.url
    figures = await asyncio.wait_for(
        drill("sentinel", url, redis_url, fake_upstream, kill, restart), DRILL_LIMIT_S
    )
    print(figures.summary())
    check_promises(figures.summary(), figures.writes_refused, figures.writes_other)
