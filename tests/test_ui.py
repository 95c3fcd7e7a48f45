"""The /ui collection page in headless Chromium (Debian chromium + Playwright); screenshots kept.

Screenshots go to test-artifacts/ui/ (git-ignored).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis

from middleware.store import keys
from tests.support.artifacts import artifacts_dir
from tests.support.browser import BROWSER_MARKS, chromium_page
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import APP_KEY_A, RunningProxy, proxy_settings, start_proxy, user_token

ARTIFACTS = artifacts_dir("ui")
# Candidate i answers after DELAYS[i] seconds, so the columns fill one after another.
DELAYS = {("system", 1.0): 0.1, ("system", 0.1): 0.5, ("assistant", 1.0): 0.9, ("assistant", 0.1): 1.3}
TEXTS = {
    ("system", 1.0): "Warm and chatty: your cat is a genius who has discovered the fridge!",
    ("system", 0.1): "A cat learned to open the fridge.",
    ("assistant", 1.0): "• Cat opens fridge\n• Owner worried\n• Needs a child lock",
    ("assistant", 0.1): "The post describes a domestic animal exhibiting problem-solving behaviour.",
}

pytestmark = BROWSER_MARKS


def variant_of(body: dict[str, Any]) -> tuple[str, float]:
    first = body["messages"][0]
    role = first["role"] if first.get("content") == "Summarize the post." else "system"
    return role, float(body["temperature"])


def responder(body: dict[str, Any]) -> Reply:
    variant = variant_of(body)
    turn = sum(1 for m in body["messages"] if m["role"] == "user")
    return Reply(content=f"{TEXTS[variant]} (turn {turn})", delay=DELAYS[variant])


@pytest.fixture
def ui_proxy(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    with start_proxy(proxy_settings(redis_url, fake_upstream, models=["fake-model"])) as running:
        yield running


@pytest.fixture
def page() -> Iterator[Any]:
    # The page forbids eval (CSP); Playwright's wait_for_function needs it.
    with chromium_page(width=1400, height=1000, bypass_csp=True) as page:
        yield page


def records(redis_url: str, user: str) -> list[str]:
    r = redis.Redis.from_url(redis_url)
    try:
        return [f[b"kind"].decode() for _, f in r.xrange(keys.prefs("tenant-a", user))]  # type: ignore[union-attr]
    finally:
        r.close()


def sign_in(page: Any, proxy: RunningProxy, user: str) -> None:
    """The app's backend mints a token and sends the user to /ui#token=... (never the app key)."""
    page.goto(f"{proxy.url}/ui#token={user_token(proxy, user)}")


def test_collect_best_and_worst_and_continue_with_the_best(
    ui_proxy: RunningProxy, fake_upstream: FakeUpstream, page: Any
) -> None:
    fake_upstream.responder = responder
    httpx.put(
        f"{ui_proxy.url}/admin/users/mina/persona",
        json={"text": "Likes short bullet lists."},
        headers=ui_proxy.admin_headers(),
    ).raise_for_status()

    sign_in(page, ui_proxy, "mina")
    page.wait_for_selector("#workspace:not([hidden])")
    assert page.text_content("#persona-text") == "Likes short bullet lists."
    assert page.text_content("#judgement-count") == "0"

    page.click("#instruction-box summary")
    page.fill("#instruction", "Summarize the post.")
    page.fill("#prompt", "POST: my cat learned to open the fridge")
    started = time.perf_counter()
    page.click("#compare-btn")
    page.wait_for_selector(".candidate.answered")
    first_seen = time.perf_counter() - started
    answered_early = page.locator(".candidate.answered").count()
    page.screenshot(path=str(ARTIFACTS / "1-answers-arriving.png"))
    page.wait_for_function("document.querySelectorAll('.candidate.answered').length === 4")
    all_seen = time.perf_counter() - started
    assert answered_early < 4 and first_seen < all_seen - 0.5  # shown as they arrive, not all at once
    # concurrently: the four calls reached the upstream together (one after another: 2.8 s in all)
    chat = [r.received_at for r in fake_upstream.chat_requests if r.body.get("temperature") is not None]
    assert len(chat) >= 4 and max(chat[:4]) - min(chat[:4]) < 1.0, chat
    assert all_seen < 4.0
    page.wait_for_selector("#judge-form:not([hidden])")

    page.click('.candidate[data-index="2"] .mark-best')
    page.click('.candidate[data-index="3"] .mark-worst')
    best = page.locator('.candidate[data-index="2"]')
    worst = page.locator('.candidate[data-index="3"]')
    assert "best" in (best.get_attribute("class") or "")
    assert "worst" in (worst.get_attribute("class") or "")
    assert best.evaluate("e => getComputedStyle(e).borderTopColor") == "rgb(22, 163, 74)"  # green
    assert worst.evaluate("e => getComputedStyle(e).borderTopColor") == "rgb(220, 38, 38)"  # red
    page.fill("#rationale", "Bullets are quick to read; the last one is stiff.")
    page.screenshot(path=str(ARTIFACTS / "2-best-and-worst-marked.png"))
    page.click("#judge-btn")

    page.wait_for_function("document.getElementById('judgement-count').textContent === '1'")
    history = page.locator("#history-list li").all_text_contents()
    assert history == ["POST: my cat learned to open the fridge", TEXTS[("assistant", 1.0)] + " (turn 1)"]
    assert page.locator(".candidate").count() == 0
    page.screenshot(path=str(ARTIFACTS / "3-history-keeps-only-the-best.png"))
    assert records(ui_proxy.settings.redis_url, "mina") == ["judgement"] + ["pair"] * 5

    # Second turn: only the best answer is carried into the conversation sent upstream.
    fake_upstream.reset()
    fake_upstream.responder = responder
    page.fill("#prompt", "Make it one line.")
    page.click("#compare-btn")
    page.wait_for_selector("#judge-form:not([hidden])")
    for request in fake_upstream.chat_requests:
        sent = [m["content"] for m in request.body["messages"]]
        assert TEXTS[("assistant", 1.0)] + " (turn 1)" in sent
        assert not any(TEXTS[v] + " (turn 1)" in sent for v in TEXTS if v != ("assistant", 1.0))
        assert sent[-1] == "Make it one line."
    page.click('.candidate[data-index="0"] .mark-best')
    page.click('.candidate[data-index="1"] .mark-worst')
    page.click('.candidate[data-index="1"] .mark-best')  # changing one's mind moves the mark
    assert page.locator(".candidate.worst").count() == 0
    page.click('.candidate[data-index="3"] .mark-worst')
    page.fill("#rationale", "Short.")
    page.click("#judge-btn")
    page.wait_for_function("document.getElementById('judgement-count').textContent === '2'")
    assert page.locator("#history-list li").count() == 4
    page.screenshot(path=str(ARTIFACTS / "4-second-turn.png"), full_page=True)
    stored = records(ui_proxy.settings.redis_url, "mina")
    assert stored.count("judgement") == 2 and stored.count("pair") == 10
    r = redis.Redis.from_url(ui_proxy.settings.redis_url)
    last = orjson.loads(r.xrange(keys.prefs("tenant-a", "mina"))[6][1][b"data"])  # type: ignore[index]
    r.close()
    assert (last["best"], last["worst"], last["rationale"]) == (1, 3, "Short.")


def stored_token(page: Any) -> str | None:
    token: str | None = page.evaluate("() => sessionStorage.getItem('persona.token')")
    return token


def test_the_token_leaves_the_url_and_survives_a_reload(ui_proxy: RunningProxy, page: Any) -> None:
    token = user_token(ui_proxy, "mina")
    page.goto(f"{ui_proxy.url}/ui#token={token}")
    page.wait_for_selector("#workspace:not([hidden])")
    assert page.text_content("#whoami-user") == "mina"
    assert "token" not in page.url  # not left in the address bar or history
    assert stored_token(page) == token
    page.reload()
    page.wait_for_selector("#workspace:not([hidden])")
    assert page.text_content("#whoami-user") == "mina"


def test_a_reload_before_the_first_answer_keeps_the_token(ui_proxy: RunningProxy, page: Any) -> None:
    """The token has left the URL while the first profile read is still unanswered: it is stored."""
    held: list[Any] = []

    def hold_the_first(route: Any) -> None:
        if not held:
            held.append(route)  # left unanswered: sign-in waits on it
        else:
            route.continue_()

    page.route("**/ui/profile", hold_the_first)
    with page.expect_request("**/ui/profile"):
        sign_in(page, ui_proxy, "mina")
    assert "token" not in page.url
    assert page.locator("#workspace").is_hidden()
    page.reload()
    page.wait_for_selector("#workspace:not([hidden])")
    assert page.text_content("#whoami-user") == "mina"


def test_a_failing_first_read_is_retried_not_taken_for_a_bad_token(ui_proxy: RunningProxy, page: Any) -> None:
    """Redis away for a moment (503) or a dropped connection does not sign the user out."""
    from playwright.sync_api import expect

    answered: list[str] = []

    def fail_twice(route: Any) -> None:
        answered.append(route.request.url)
        if len(answered) == 1:
            route.fulfill(status=503, json={"error": {"message": "redis is unavailable"}})
        elif len(answered) == 2:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/ui/profile", fail_twice)
    sign_in(page, ui_proxy, "mina")
    page.wait_for_selector("#workspace:not([hidden])")
    assert page.text_content("#whoami-user") == "mina"
    assert len(answered) == 3 and stored_token(page) is not None
    expect(page.locator("#status")).to_have_text("")  # the retry notice goes once signed in


def test_a_bad_token_or_the_app_key_cannot_sign_in(ui_proxy: RunningProxy, page: Any) -> None:
    token = user_token(ui_proxy, "mina")
    page.goto(f"{ui_proxy.url}/ui")
    page.fill("#user-token", token[:-4] + "AAAA")  # tampered
    page.click("#signin-btn")
    page.wait_for_selector("#status.error")
    assert "invalid user token" in (page.text_content("#status") or "")
    assert page.locator("#workspace").is_hidden()
    page.fill("#user-token", APP_KEY_A)  # the app key names no user: the page cannot act with it
    page.click("#signin-btn")
    page.wait_for_function("() => !document.getElementById('status').textContent.includes('invalid user')")
    assert page.locator("#workspace").is_hidden()
    assert "end-user id is required" in (page.text_content("#status") or "")
