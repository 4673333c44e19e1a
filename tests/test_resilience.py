"""Stopping cleanly, losing the database and getting it back, the admin token's first start."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.testing import running_gateway, test_config

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_stops_the_service_cleanly(soulgate_database_url: str, tmp_path: Path) -> None:
    port = _free_port()
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'[database]\nurl = "{soulgate_database_url}"\n'
        f'[admin]\nport = {port}\ntoken = "t"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--config", str(cfg), "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "SOULGATE_CONFIG": ""},
    )
    try:
        deadline = time.monotonic() + 60
        import urllib.request

        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """A Postgres of this test's own, so the test can stop and restart it."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("own-pg"), cleanup_mode="stop")
    try:
        yield server.get_uri(), server
    finally:
        server.cleanup()


def _pg_ctl(server: object, *args: str) -> None:
    from pgserver._commands import pg_ctl

    pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=30)  # type: ignore[attr-defined]


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url) as r:
            return r.status
    except aiohttp.ClientError:
        return 0


async def test_database_lost_then_back_workers_resume(own_postgres: tuple[str, object]) -> None:
    url, server = own_postgres
    config = test_config({"workers": {"idle_poll_seconds": 0.2}})
    auth = {"Authorization": "Bearer test-admin-token"}
    async with running_gateway(url, config=config) as h, aiohttp.ClientSession(headers=auth) as http:
        ready = f"http://127.0.0.1:{h.gateway.admin_port}/readyz"
        assert "Commands" in await h.ask("/help")
        await asyncio.to_thread(_pg_ctl, server, "-w", "stop", "-m", "immediate")
        assert await _status(http, ready) == 503
        with pytest.raises(Exception):  # noqa: B017 - an adapter must not ack what it could not store
            await h.send("lost?")
        await asyncio.sleep(1.0)  # workers keep backing off meanwhile
        await asyncio.to_thread(server.ensure_postgres_running)  # type: ignore[attr-defined]
        for _ in range(100):
            if await _status(http, ready) == 200:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("never ready again")
        assert "Commands" in await h.ask("/help", timeout=20)


async def test_admin_token_is_generated_once_and_kept(soulgate_database_url: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = test_config({"admin": {"token": ""}})
    async with running_gateway(soulgate_database_url, config=config) as h:
        token = h.gateway.admin_token
        assert len(token) > 30
    assert f"generated admin token (store it safely): {token}" in capsys.readouterr().out
    async with running_gateway(soulgate_database_url, config=config) as h2:
        assert h2.gateway.admin_token == token
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{h2.gateway.admin_port}/api/status"
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
    assert token not in capsys.readouterr().out  # printed only at the first start


async def test_admin_answers_while_channel_sdks_load(soulgate_database_url: str) -> None:
    """Adapters are built off the event loop after the admin endpoint is up."""
    import threading
    import types

    from gateway import AdapterSpec, hookimpl
    from gateway.runtime import Gateway
    from gateway.testing import FakeAdapter

    release = threading.Event()

    def slow_factory(account: str, cfg: object) -> FakeAdapter:
        release.wait(30)  # an SDK import that takes its time
        return FakeAdapter(account)

    @hookimpl
    def soulgate_adapters() -> list[AdapterSpec]:
        return [AdapterSpec(channel="slowpoke", factory=slow_factory)]

    plugin = types.SimpleNamespace(soulgate_adapters=soulgate_adapters)
    config = test_config({"channels": {"slowpoke": {"main": {}}}})
    gw = Gateway(config, extra_plugins=[("slowpoke", plugin)], entry_points=False,
                 database_url=soulgate_database_url)
    starting = asyncio.create_task(gw.start())
    try:
        for _ in range(300):
            if gw.admin_port is not None:
                break
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{gw.admin_port}"
        auth = {"Authorization": "Bearer test-admin-token"}
        async with aiohttp.ClientSession(headers=auth) as http:
            assert await _status(http, f"{base}/healthz") == 200
            assert await _status(http, f"{base}/readyz") == 503
            assert not starting.done()
            release.set()
            await asyncio.wait_for(starting, 30)
            assert await _status(http, f"{base}/readyz") == 200
            assert ("slowpoke", "main") in gw.adapters
    finally:
        release.set()
        await gw.stop()
