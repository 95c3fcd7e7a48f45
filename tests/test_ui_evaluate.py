"""The /ui/evaluate page in headless Chromium: sign in to a run, ask, pick blind among A/B/C, repeat.

Screenshots go to $PERSONA_TEST_ARTIFACTS/ui_evaluate/ (or test-artifacts/ui_evaluate/, git-ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.artifacts import artifacts_dir
from tests.support.browser import BROWSER_MARKS, chromium_page
from tests.support.fake_upstream import FakeUpstream
from tests.support.online_eval import create_run, give_personas, persona_responder
from tests.support.proxy import RunningProxy, user_token

CONDITION_WORDS = ("own", "other", "baseline", "persona_user", "condition")

pytestmark = BROWSER_MARKS


@pytest.fixture
def page() -> Iterator[Any]:
    with chromium_page(width=1300, height=900) as page:
        yield page


def test_a_user_picks_blind_among_three_answers_and_the_choices_are_recorded(
    proxy: RunningProxy, fake_upstream: FakeUpstream, page: Any
) -> None:
    from playwright.sync_api import expect  # locator waits need no eval (the page's CSP forbids it)

    fake_upstream.responder = persona_responder(delay=0.2)
    give_personas(proxy)
    run_id = create_run(proxy, name="Spring study")
    trial_bodies: list[dict[str, Any]] = []
    page.on(
        "response",
        lambda r: trial_bodies.append(r.json()) if r.url.endswith("/trials") and r.status == 201 else None,
    )

    # the app's backend hands over a token for alice: no app key in the browser
    page.goto(f"{proxy.url}/ui/evaluate?evaluation={run_id}#token={user_token(proxy, 'alice')}")
    assert page.input_value("#evaluation-id") == run_id
    page.wait_for_selector("#eval-workspace:not([hidden])")
    assert page.inner_text("#whoami-run") == "Spring study"

    # First prompt: pick the answer written for alice, with a reason.
    page.fill("#eval-prompt", "Summarize: my cat opens the fridge.")
    page.click("#eval-ask-btn")
    page.wait_for_selector(".answer >> nth=2")
    cards = page.locator(".answer")
    assert [cards.nth(i).locator("h3").inner_text() for i in range(3)] == ["Answer A", "Answer B", "Answer C"]
    texts = [cards.nth(i).locator(".content").inner_text() for i in range(3)]
    assert "answer for alice" in texts and "plain answer" in texts
    # Nothing on the page or in the DOM says which answer is which.
    html = page.locator("#answers").inner_html().lower()
    assert not any(word in html for word in CONDITION_WORDS), html
    assert page.is_disabled("#choice-btn")
    mine = "ABC"[texts.index("answer for alice")]
    page.click(f".answer[data-label='{mine}']")
    assert "chosen" in (page.get_attribute(f".answer[data-label='{mine}']", "class") or "")
    page.fill("#eval-rationale", "it sounds like me")
    page.screenshot(path=str(artifacts_dir("ui_evaluate") / "evaluate_answers.png"), full_page=True)
    page.click("#choice-btn")
    expect(page.locator("#answered-count")).to_have_text("1")
    assert page.locator(".answer").count() == 0
    assert page.input_value("#eval-prompt") == ""

    # Second prompt: a tie, through the buttons.
    page.fill("#eval-prompt", "And a second one?")
    page.click("#eval-ask-btn")
    page.wait_for_selector(".answer >> nth=2")
    page.click(".pick[data-choice='tie']")
    page.click("#choice-btn")
    expect(page.locator("#answered-count")).to_have_text("2")
    page.screenshot(path=str(artifacts_dir("ui_evaluate") / "evaluate_after.png"), full_page=True)

    # The app saw only labels and texts; the store has both choices, with what they meant.
    assert len(trial_bodies) == 2
    assert all(set(a) == {"label", "content"} for body in trial_bodies for a in body["answers"])
    with httpx.Client(base_url=proxy.url, headers=proxy.admin_headers(), timeout=10) as c:
        stored = c.get(f"/admin/evaluations/{run_id}/trials").json()["data"]
        report = c.get(f"/admin/evaluations/{run_id}/report").json()
    choices = [(t["choice"]["choice"], t["choice"]["condition"], t["choice"]["rationale"]) for t in stored]
    assert choices == [(mine, "own", "it sounds like me"), ("tie", None, None)]
    alice = report["per_user"][0]
    assert (alice["user"], alice["wins"]["own"], alice["ties"]) == ("alice", 1, 1)


def test_signing_in_with_a_user_outside_the_run_shows_an_error(
    proxy: RunningProxy, fake_upstream: FakeUpstream, page: Any
) -> None:
    give_personas(proxy, ("alice", "bob", "carol"))
    run_id = create_run(proxy, ("alice", "bob"))
    page.goto(f"{proxy.url}/ui/evaluate")
    page.fill("#user-token", user_token(proxy, "carol"))
    page.fill("#evaluation-id", run_id)
    page.click("#signin-btn")
    page.wait_for_selector("#status.error")
    assert "not part of evaluation" in page.inner_text("#status")
    assert page.is_hidden("#eval-workspace")


def test_the_collection_page_links_to_the_evaluation_page(proxy: RunningProxy, page: Any) -> None:
    page.goto(f"{proxy.url}/ui")
    page.click("#evaluate-link")
    page.wait_for_selector("#evaluation-id")
    assert page.url.endswith("/ui/evaluate")
