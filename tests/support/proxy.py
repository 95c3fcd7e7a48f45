"""The proxy under test: create_app(settings) served by uvicorn in a thread, plus its settings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from middleware.app import create_app
from middleware.config import Settings
from middleware.services import Services
from tests.support.fake_upstream import FakeUpstream
from tests.support.server_thread import ServerThread

APP_KEY_A = "sk-app-tenant-a-0123456789"
APP_KEY_B = "sk-app-tenant-b-9876543210"
ADMIN_KEY = "sk-admin-0123456789abcdef"


def proxy_settings(redis_url: str, upstream: FakeUpstream, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "upstream_api_base": upstream.base_url,
        "upstream_api_key": "sk-upstream-secret",
        "api_keys": {APP_KEY_A: "tenant-a", APP_KEY_B: "tenant-b"},
        "admin_key": ADMIN_KEY,
        "upstream_retry_initial_s": 0.01,
        "upstream_retry_max_s": 0.05,
        "embedded_redis": False,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningProxy:
    server: ServerThread
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.base_url

    @property
    def v1(self) -> str:
        return f"{self.server.base_url}/v1"

    @property
    def services(self) -> Services:
        services: Services = self.server.app.state.services
        return services

    def admin_headers(self, tenant: str = "tenant-a") -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}", "X-Persona-Tenant": tenant}

    def __enter__(self) -> RunningProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop()


def admin_client(proxy: RunningProxy, tenant: str = "tenant-a") -> httpx.Client:
    """An HTTP client with the admin key, speaking for `tenant`."""
    return httpx.Client(base_url=proxy.url, headers=proxy.admin_headers(tenant), timeout=10)


def app_client(proxy: RunningProxy, key: str = APP_KEY_A) -> httpx.Client:
    """An HTTP client with an app key."""
    return httpx.Client(base_url=proxy.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def user_token(proxy: RunningProxy, user: str, key: str = APP_KEY_A, ttl_s: int = 900) -> str:
    """An end-user token for `user`, minted with an app key (what an app backend does)."""
    minted = httpx.post(
        f"{proxy.url}/v1/user-tokens",
        headers={"Authorization": f"Bearer {key}"},
        json={"user": user, "ttl_s": ttl_s},
        timeout=10,
    )
    minted.raise_for_status()
    token: str = minted.json()["token"]
    return token


def start_proxy(settings: Settings) -> RunningProxy:
    """The proxy serving on a free port; ``with start_proxy(settings) as running:`` stops it after."""
    return RunningProxy(ServerThread(create_app(settings)).start(), settings)


@pytest.fixture
def proxy(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    # A loaded machine (three test processes on two cores) must not make the 50 ms persona read time
    # out and a call go on without its persona; what a timed-out read does is tested with proxies of
    # their own, on a Redis a test may pause.
    with start_proxy(proxy_settings(redis_url, fake_upstream, persona_read_timeout_s=2.0)) as running:
        yield running
