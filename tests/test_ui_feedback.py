"""The /ui page's quick answer in headless Chromium: thumbs and regenerate reach POST /v1/feedback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.artifacts import artifacts_dir
from tests.support.browser import BROWSER_MARKS, chromium_page
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import RunningProxy, proxy_settings, start_proxy, user_token
from tests.support.stored import stored_records

ARTIFACTS = artifacts_dir("ui")
pytestmark = BROWSER_MARKS


@pytest.fixture
def ui_proxy(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    settings = proxy_settings(redis_url, fake_upstream, models=["fake-model"], feedback_keep_text=True)
    with start_proxy(settings) as running:
        yield running


def test_thumbs_and_regenerate_from_the_page(ui_proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="First try: a long answer."), Reply(content="Second try: short."))
    with chromium_page(width=1400, height=1000, bypass_csp=True) as page:
        page.goto(f"{ui_proxy.url}/ui#token={user_token(ui_proxy, 'rui')}")
        page.wait_for_selector("#workspace:not([hidden])")
        page.fill("#quick-prompt", "Explain DNS")
        page.click("#quick-btn")
        page.wait_for_function("document.getElementById('quick-text').textContent.startsWith('First try')")
        page.click("#thumbs-down")
        page.wait_for_function("document.getElementById('quick-status').textContent.includes('reward 0')")
        assert "on" in (page.get_attribute("#thumbs-down", "class") or "")
        page.click("#regenerate")
        page.wait_for_function("document.getElementById('quick-text').textContent.startsWith('Second try')")
        page.click("#thumbs-up")
        page.wait_for_function("document.getElementById('quick-status').textContent.includes('reward 1')")
        page.screenshot(path=str(ARTIFACTS / "feedback-thumbs-and-regenerate.png"))
        assert "on" in (page.get_attribute("#thumbs-up", "class") or "")
        assert "on" not in (page.get_attribute("#thumbs-down", "class") or "")
    # The upstream saw the same conversation twice; the liked answer is preferred over the other.
    sent = [r.body["messages"] for r in fake_upstream.chat_requests]
    assert len(sent) == 2 and sent[0] == sent[1] == [{"role": "user", "content": "Explain DNS"}]
    pairs: list[dict[str, Any]] = [
        p
        for p in stored_records(ui_proxy.settings.redis_url, "tenant-a", "rui")
        if p.get("source") == "implicit"
    ]
    assert [(p["chosen"]["content"], p["rejected"]["content"]) for p in pairs] == [
        ("Second try: short.", "First try: a long answer.")
    ]
