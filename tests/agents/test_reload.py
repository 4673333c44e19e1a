"""Reload without a restart: SOUL files and routes; broken files keep the previous version."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from gateway.config import load_config
from gateway.testing import GatewayHarness, running_gateway
from tests.fakes.llm import FakeLLM

from .conftest import admin, agent_config, audit, write_soul


def _config_file(path: Path, fake: FakeLLM, souls: Path, routes: str = "", name: str = "") -> Path:
    instance = f'instance_name = "{name}"' if name else ""
    path.write_text(f"""
[gateway]
{instance}
shutdown_grace_seconds = 2.0
[workers]
lease_seconds = 5.0
idle_poll_seconds = 0.2
[admin]
port = 0
token = "test-admin-token"
[http]
port = 0
[agents]
soul_dir = "{souls}"
[models.default]
model = "openai/m-default"
api_base = "{fake.api_base}"
api_key = "sk-test"
{routes}
""")
    return path


def _persona(fake: FakeLLM) -> str:
    return str(fake.last_request.messages[0]["content"]).split("\n")[0]


async def test_reload_souls_and_routes_keeping_a_broken_files_previous_version(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    souls = tmp_path / "souls"
    soul = write_soul(souls, "assistant", body="Version one.")
    config_path = _config_file(tmp_path / "soulgate.toml", fake_llm, souls)
    async with running_gateway(soulgate_database_url, config=load_config(config_path)) as h:
        await h.ask("hi")
        assert _persona(fake_llm) == "Version one."

        soul.write_text("---\nname: assistant\nmodel: [oops\n---\nVersion broken.\n")
        status, body = await admin(h, "POST", "/api/reload")
        assert status == 422 and body["ok"] is False
        assert f"{soul}:4: invalid YAML in front matter" in body["problems"][0]
        assert f"{soul}: keeping the previous version of agent 'assistant'" in body["problems"]
        await h.ask("still there?")
        assert _persona(fake_llm) == "Version one."

        soul.write_text("---\nname: assistant\n---\nVersion two.\n")
        write_soul(souls, "second", body="I am the second agent.")
        _config_file(config_path, fake_llm, souls, '[[routes]]\nconversation = "conv-2"\nagent = "second"\n')
        status, body = await admin(h, "POST", "/api/reload")
        assert (status, body["ok"], body["problems"]) == (200, True, [])
        assert body["reloaded"] == ["routes", "agents", "models", "souls"]
        await h.ask("hi")
        assert _persona(fake_llm) == "Version two."
        await h.ask("hi", conversation="conv-2")
        assert _persona(fake_llm) == "I am the second agent."
        status, st = await admin(h, "GET", "/api/status")
        assert [a["name"] for a in st["agents"]] == ["assistant", "second"]

        config_path.write_text("this is [not toml")
        status, body = await admin(h, "POST", "/api/reload")
        assert status == 422 and "invalid TOML" in body["problems"][0]
        await h.ask("hi", conversation="conv-2")  # nothing changed: the route is still there
        assert _persona(fake_llm) == "I am the second agent."
        assert [e["detail"]["ok"] for e in await audit(h, "reload")] == [False, True, False]

        # SIGHUP calls the same method
        soul.write_text("---\nname: assistant\n---\nVersion three.\n")
        _config_file(config_path, fake_llm, souls)
        assert (await h.gateway.reload())["ok"]
        await h.ask("hi")
        assert _persona(fake_llm) == "Version three."


async def _agents(h: GatewayHarness) -> list[str]:
    _, status = await admin(h, "GET", "/api/status")
    return [a["name"] for a in status["agents"]]


async def _reloads(h: GatewayHarness) -> list[tuple[str, str, bool]]:
    """(instance, asked by, ok) of every reload audited, sorted."""
    rows = [(e["detail"]["instance"], e["detail"].get("requested_by") or "", e["detail"]["ok"])
            for e in await audit(h, "reload")]
    return sorted(rows)


async def test_reload_everywhere_reaches_the_other_instances(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    souls = tmp_path / "souls"
    write_soul(souls, "assistant")
    a_file = _config_file(tmp_path / "a.toml", fake_llm, souls, name="a")
    b_file = _config_file(tmp_path / "b.toml", fake_llm, souls, name="b")
    async with running_gateway(soulgate_database_url, config=load_config(a_file)) as a, \
            running_gateway(soulgate_database_url, config=load_config(b_file)) as b:
        write_soul(souls, "second", body="I am the second agent.")
        status, body = await admin(a, "POST", "/api/reload?everywhere=perhaps")
        assert (status, body) == (400, {"error": "everywhere must be true or false"})
        assert await _reloads(a) == [] and await _agents(a) == ["assistant"]  # nothing reloaded

        # Anything else on the channel (an unknown sender's junk, an echo of our own) is no command.
        for payload in ("junk", '{"from": 1, "text": "x"}', "[]"):
            await a.gateway.store.db.fetch("SELECT pg_notify('soulgate_reload', $1)", payload)
        await asyncio.sleep(0.3)
        assert await _reloads(a) == [] and await _agents(b) == ["assistant"]

        status, body = await admin(a, "POST", "/api/reload?everywhere=true")
        assert (status, body["ok"], body["broadcast"], body["instance"]) == (200, True, True, "a")
        for _ in range(100):  # b reloads when the notification reaches it
            if await _agents(b) == ["assistant", "second"]:
                break
            await asyncio.sleep(0.05)
        assert await _agents(b) == ["assistant", "second"]
        assert await _reloads(a) == [("a", "", True), ("b", "a", True)]

        # A config that does not validate here is not pushed to the others.
        write_soul(souls, "third")
        a_file.write_text("this is [not toml")
        status, body = await admin(a, "POST", "/api/reload?everywhere=1")
        assert (status, body["ok"], body["broadcast"]) == (422, False, False)
        await asyncio.sleep(0.3)
        assert await _agents(b) == ["assistant", "second"]

        # Without everywhere, only the instance asked reloads.
        status, body = await admin(b, "POST", "/api/reload")
        assert (status, body["broadcast"], body["instance"]) == (200, False, "b")
        await asyncio.sleep(0.3)
        assert await _agents(b) == ["assistant", "second", "third"]
        assert await _agents(a) == ["assistant", "second"]
        assert await _reloads(a) == [("a", "", False), ("a", "", True), ("b", "", True), ("b", "a", True)]


async def test_a_broken_soul_at_start_is_skipped_and_reported(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    write_soul(tmp_path, "assistant", body="I work.")
    broken = tmp_path / "broken.md"
    broken.write_text("---\nname: broken\nunknown_key: 1\n---\nhi\n")
    config = agent_config(fake_llm, tmp_path, routes=[{"agent": "broken", "conversation": "conv-b"}])
    async with running_gateway(soulgate_database_url, config=config) as h:
        assert await h.ask("hello") == "echo: hello"
        assert "**broken** is not available" in await h.ask("hello", conversation="conv-b")
        [event] = await audit(h, "soul_error")
        assert event["detail"]["problem"].startswith(f"{broken}:3: unknown_key: unknown key")


async def test_reload_needs_the_admin_token(
    soulgate_database_url: str, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    write_soul(tmp_path, "assistant")
    async with running_gateway(soulgate_database_url, config=agent_config(fake_llm, tmp_path)) as h:
        async with aiohttp.ClientSession() as session:
            for method, path in (("POST", "/api/reload"), ("GET", "/api/runs")):
                async with session.request(method, f"http://127.0.0.1:{h.gateway.admin_port}{path}") as resp:
                    assert resp.status == 401
        status, body = await admin(h, "GET", "/api/runs?limit=oops")
        assert status == 400
        status, body = await admin(h, "GET", "/api/runs?agent=nobody")
        assert status == 200 and body["runs"] == [] and body["totals"]["all"]["calls"] == 0
