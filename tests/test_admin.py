"""The admin endpoint: auth, health, readiness, metrics, status, audit, dead letters, proactive send."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from gateway import TransientDeliveryError
from gateway.metrics import Metrics
from gateway.testing import FakeAdapter, running_gateway, test_config

TOKEN = "test-admin-token"


def _url(h: object, path: str) -> str:
    return f"http://127.0.0.1:{h.gateway.admin_port}{path}"  # type: ignore[attr-defined]


async def test_auth_is_required_except_healthz(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url) as h, aiohttp.ClientSession() as http:
        async with http.get(_url(h, "/healthz")) as r:
            assert r.status == 200
        for path in ("/api/status", "/api/audit", "/api/outbox/dead", "/metrics", "/readyz"):
            async with http.get(_url(h, path)) as r:
                assert r.status == 401, path
            async with http.get(_url(h, path), headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401, path
            async with http.get(_url(h, path), headers={"Authorization": f"Basic {TOKEN}"}) as r:
                assert r.status == 401, path
        async with http.post(_url(h, "/api/send"), json={"text": "x"}) as r:
            assert r.status == 401


async def test_status_metrics_and_readiness(soulgate_database_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_gateway(soulgate_database_url) as h, aiohttp.ClientSession(headers=auth) as http:
        assert "echo" not in await h.ask("/help")
        async with http.get(_url(h, "/readyz")) as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with http.get(_url(h, "/api/status")) as r:
            status = await r.json()
        assert status["queues"]["inbox"] == {"pending": 0, "claimed": 0}
        assert {"channel": "fake", "account": "test"}.items() <= status["adapters"][0].items()
        assert any(p["name"] == "core" and "soulgate_skills" in p["hooks"] for p in status["plugins"])
        assert "secret" not in str(status).lower() and TOKEN not in str(status)
        async with http.get(_url(h, "/metrics")) as r:
            text = await r.text()
        assert 'soulgate_admitted_total{channel="fake"} 1.0' in text
        assert 'soulgate_queue_depth{queue="outbox",status="dead"} 0.0' in text
        # the admission's own time and the statement that carried it
        assert 'soulgate_admit_seconds_count{channel="fake"} 1.0' in text
        assert "soulgate_admission_statements_total 1.0" in text
        assert "soulgate_admission_events_total 1.0" in text
        async with http.get(_url(h, "/api/plugins")) as r:
            assert any(p["name"] == "default_route" for p in (await r.json())["plugins"])


async def test_readyz_is_503_when_the_database_is_gone(soulgate_database_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_gateway(soulgate_database_url) as h, aiohttp.ClientSession(headers=auth) as http:
        await h.gateway.store.db.close()  # the pool is gone: as good as a lost server for the probe
        async with http.get(_url(h, "/readyz")) as r:
            assert r.status == 503
        async with http.get(_url(h, "/healthz")) as r:
            assert r.status == 200  # alive, just not ready


async def test_dead_letters_and_audit_are_listed(soulgate_database_url: str) -> None:
    adapter = FakeAdapter()
    adapter.fail_next(TransientDeliveryError("boom"))
    config = test_config({"delivery": {"max_attempts": 1}})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_gateway(soulgate_database_url, config=config, adapter=adapter) as h, \
            aiohttp.ClientSession(headers=auth) as http:
        await h.send("/help")
        await h.idle()
        async with http.get(_url(h, "/api/outbox/dead")) as r:
            dead = (await r.json())["dead"]
        assert len(dead) == 1 and "boom" in dead[0]["last_error"] and dead[0]["channel"] == "fake"
        async with http.get(_url(h, "/api/audit?kind=delivery_dead")) as r:
            audit = (await r.json())["audit"]
        assert audit[0]["detail"]["outbox_id"] == dead[0]["id"]
        async with http.get(_url(h, "/api/audit?limit=abc")) as r:
            assert r.status == 400


async def test_proactive_send_to_a_stored_conversation(soulgate_database_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_gateway(soulgate_database_url) as h, aiohttp.ClientSession(headers=auth) as http:
        await h.ask("/help", conversation="c9")
        async with http.get(_url(h, "/api/conversations")) as r:
            convs = (await r.json())["conversations"]
        key = convs[0]["key"]
        async with http.post(_url(h, "/api/send"), json={"conversation": key, "text": "ping"}) as r:
            assert r.status == 202
        msg = await h.expect_reply("ping")
        assert msg.conversation == "c9"
        # bad input changes nothing
        async with http.post(_url(h, "/api/send"), data=b"not json") as r:
            assert r.status == 400
        async with http.post(_url(h, "/api/send"), json={"conversation": key, "text": "  "}) as r:
            assert r.status == 400
        async with http.post(_url(h, "/api/send"), json={"conversation": "nope", "text": "x"}) as r:
            assert r.status == 404
        async with http.post(_url(h, "/api/send"), json={"text": "x"}) as r:
            assert r.status == 400
        async with http.post(_url(h, "/api/send"), data=b"x" * 2_000_000) as r:
            assert r.status == 413
        async with http.get(_url(h, "/api/nothing-here")) as r:
            assert r.status == 404
        await h.idle()
        assert [m.text for m in h.adapter.sent][-1] == "ping"


def test_every_metric_is_in_the_operations_guide() -> None:
    """docs/operations.md says what each metric means and when to alert: a new one must be added there."""
    guide = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text(encoding="utf-8")
    names = {family.name for family in Metrics().registry.collect()}
    assert "soulgate_admission_statements" in names
    assert [n for n in sorted(names) if f"`{n}" not in guide] == []
