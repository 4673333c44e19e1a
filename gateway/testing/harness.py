"""A running gateway for tests, on real (embedded) Postgres, with a fake channel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from storage import create_database, drop_database, start_embedded

from ..adapter import Adapter, AdmitResult
from ..config import Config, config_from_mapping
from ..runtime import Gateway
from .fake_adapter import FakeAdapter, SentMessage

__all__ = ["GatewayHarness", "fresh_database", "running_gateway", "test_config", "test_server_url"]

#: settings that make a test gateway react in milliseconds rather than seconds
FAST: dict[str, Any] = {
    "workers": {"dispatch": 4, "delivery": 4, "lease_seconds": 5.0, "idle_poll_seconds": 0.2},
    "delivery": {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5},
    "admin": {"port": 0, "token": "test-admin-token"},
    "http": {"port": 0},
    "gateway": {"shutdown_grace_seconds": 2.0},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_config(overrides: dict[str, Any] | None = None, *, env: dict[str, str] | None = None) -> Config:
    """A validated config with fast test settings plus ``overrides`` (a nested dict)."""
    return config_from_mapping(_merge(FAST, overrides or {}), env=env or {})


def test_server_url(data_dir: Path) -> str:
    """Start (or join) an embedded Postgres for a test session."""
    return start_embedded(data_dir)


@asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = await create_database(server_url, name)
    try:
        yield url
    finally:
        await drop_database(server_url, name)


class GatewayHarness:
    """What a test drives: the gateway, its fake channel, and helpers."""

    def __init__(self, gateway: Gateway, adapter: FakeAdapter) -> None:
        self.gateway = gateway
        self.adapter = adapter

    @property
    def services(self) -> Any:
        return self.gateway.services

    async def send(self, text: str, **kwargs: Any) -> AdmitResult:
        """Deliver a message to the gateway through the fake channel."""
        return await self.adapter.inject(text, **kwargs)

    async def expect_reply(
        self, contains: str | None = None, *, timeout: float = 10.0  # noqa: ASYNC109
    ) -> SentMessage:
        """Wait for the next reply not yet returned by an earlier call; optionally check its text."""
        count = self._seen + 1
        sent = await self.adapter.wait_sent(count, timeout)
        self._seen = count
        msg = sent[count - 1]
        if contains is not None and contains not in msg.text:
            raise AssertionError(f"expected a reply containing {contains!r}, got {msg.text!r}")
        return msg

    async def ask(self, text: str, *, timeout: float = 10.0, **kwargs: Any) -> str:  # noqa: ASYNC109
        """Send and wait for the reply text."""
        await self.send(text, **kwargs)
        return (await self.expect_reply(timeout=timeout)).text

    async def idle(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        await self.gateway.wait_idle(timeout)

    _seen = 0


@asynccontextmanager
async def running_gateway(
    database_url: str,
    *,
    config: Config | None = None,
    plugins: Iterable[tuple[str, object]] = (),
    adapter: FakeAdapter | None = None,
    extra_adapters: Iterable[Adapter] = (),
    entry_points: bool = False,
    start: bool = True,
) -> AsyncIterator[GatewayHarness]:
    """Start a gateway on ``database_url`` with a fake channel and the given extra plugins."""
    gw = Gateway(
        config or test_config(), extra_plugins=plugins, entry_points=entry_points,
        database_url=database_url,
    )
    fake = adapter or FakeAdapter()
    gw.add_adapter(fake)
    for extra in extra_adapters:
        gw.add_adapter(extra)
    if start:
        await gw.start()
    try:
        yield GatewayHarness(gw, fake)
    finally:
        await asyncio.shield(gw.stop())

# Not tests themselves, despite their names (pytest would collect them when imported).
test_config.__test__ = False  # type: ignore[attr-defined]
test_server_url.__test__ = False  # type: ignore[attr-defined]
