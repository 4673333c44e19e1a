"""A plugin that raises, hangs, fails to import or wants another API version.

Each is reported the same ways (log naming plugin and hook, an audit row, the
``soulgate_plugin_errors`` metric, ``/api/plugins``, and ``soulgate check`` for
what can be seen before start), and the gateway goes on answering through the
other plugins.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import Command, CommandContext, Envelope, Reply, Services, Skill, hookimpl
from gateway.cli import main as soulgate
from gateway.dispatch import GENERIC_ERROR
from gateway.testing import GatewayFactory, GatewayHarness, test_config


class Good:
    @hookimpl
    def soulgate_skills(self) -> list[Skill]:
        async def ping(ctx: CommandContext) -> str:
            return "pong"

        return [Command("ping", "answers pong", ping)]


class Raiser:
    @hookimpl
    def soulgate_skills(self) -> list[Skill]:
        async def boom(ctx: CommandContext) -> str:
            raise RuntimeError("kaboom")

        return [Command("boom", "always fails", boom)]

    @hookimpl
    def soulgate_inbound(self, envelope: Envelope) -> None:
        if "explode" in envelope.text:
            raise ValueError("inbound kaboom")


class Hanger:
    @hookimpl
    def soulgate_skills(self) -> list[Skill]:
        async def hang(ctx: CommandContext) -> str:
            await asyncio.sleep(60)
            return "never"

        return [Command("hang", "never answers", hang)]

    @hookimpl
    async def soulgate_inbound(self, envelope: Envelope) -> None:
        if "stall" in envelope.text:
            await asyncio.sleep(60)


class FailsAtStartup:
    @hookimpl
    def soulgate_skills(self) -> list[Skill]:
        async def gone(ctx: CommandContext) -> str:
            return "still here"

        return [Command("gone", "from a plugin that fails at startup", gone)]

    @hookimpl
    async def soulgate_startup(self, services: Services) -> None:
        raise ConnectionError("cannot reach its backend")


class SkillsRaiser:
    @hookimpl
    def soulgate_skills(self) -> list[Skill]:
        raise KeyError("no skills today")


class Future:
    SOULGATE_PLUGIN_API = "2.0"

    @hookimpl
    def soulgate_skills(self) -> list[Skill]:
        return []


class ErrorListener:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    def soulgate_error(self, plugin: str, hook: str, error: BaseException) -> None:
        self.seen.append((plugin, hook))


@pytest.fixture
def broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A plugin module on sys.path whose import raises."""
    (tmp_path / "sg_broken_plugin.py").write_text('raise RuntimeError("broken at import")\n')
    (tmp_path / "sg_future_plugin.py").write_text('SOULGATE_PLUGIN_API = "2.1"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    return "sg_broken_plugin"


def _errors(h: GatewayHarness) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(h.gateway.metrics.render().decode()):
        if family.name == "soulgate_plugin_errors":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[(s.labels["plugin"], s.labels["hook"])] = s.value
    return out


async def _api_plugins(h: GatewayHarness) -> dict[str, dict[str, Any]]:
    url = f"http://127.0.0.1:{h.gateway.admin_port}/api/plugins"
    async with aiohttp.ClientSession() as http, http.get(
        url, headers={"Authorization": "Bearer test-admin-token"}
    ) as resp:
        assert resp.status == 200
        return {p["name"]: p for p in (await resp.json())["plugins"]}


async def test_failing_plugins_are_reported_and_the_gateway_goes_on(
    soulgate_gateway: GatewayFactory, broken_module: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="soulgate.plugins")
    listener = ErrorListener()
    config = test_config({"plugins": {"hook_timeout": 0.3, "modules": [broken_module, "sg_future_plugin"]}})
    plugins = [("good", Good()), ("raiser", Raiser()), ("hanger", Hanger()), ("future", Future()),
               ("startup", FailsAtStartup()), ("skills_raiser", SkillsRaiser()), ("listener", listener)]
    async with soulgate_gateway(config=config, plugins=plugins) as h:
        # a raising command and a hanging one: generic error, the next message is answered
        assert await h.ask("/boom") == GENERIC_ERROR
        assert await h.ask("/hang") == GENERIC_ERROR
        assert await h.ask("/ping") == "pong"
        # a raising and a hanging inbound filter are skipped; the message still goes through
        assert await h.ask("/ping explode") == "pong"
        assert await h.ask("/ping stall") == "pong"
        # the plugin that failed at startup is taken out with its command
        assert "Unknown command `/gone`" in await h.ask("/gone")
        await h.idle()

        expected = {
            ("raiser", "command /boom"), ("raiser", "soulgate_inbound"),
            ("hanger", "command /hang"), ("hanger", "soulgate_inbound"),
            ("startup", "soulgate_startup"), ("skills_raiser", "soulgate_skills"),
            (broken_module, "load"), ("sg_future_plugin", "load"), ("future", "load"),
        }
        # metric
        assert {k for k, v in _errors(h).items() if v >= 1} == expected
        # audit log
        rows = await h.gateway.store.audit.recent(limit=100, kind="plugin_error")
        assert {(r["plugin"], r["detail"]["hook"]) for r in rows} == expected
        by_hook = {(r["plugin"], r["detail"]["hook"]): r["detail"]["error"] for r in rows}
        assert "kaboom" in by_hook[("raiser", "command /boom")]
        assert "timed out after 0.3s" in by_hook[("hanger", "soulgate_inbound")]
        assert "wants plugin API 2.0, this gateway has 1.0" in by_hook[("future", "load")]
        assert "broken at import" in by_hook[(broken_module, "load")]
        # soulgate_error listeners hear of every failure
        assert set(listener.seen) == expected
        # log lines name plugin and hook
        logged = caplog.text
        assert "plugin 'raiser' failed in hook 'command /boom': RuntimeError: kaboom" in logged
        assert "plugin 'hanger' failed in hook 'soulgate_inbound'" in logged
        assert f"plugin '{broken_module}' failed in hook 'load'" in logged
        assert "plugin 'future' failed in hook 'load': wants plugin API 2.0" in logged
        # /api/plugins state
        api = await _api_plugins(h)
        assert api["good"]["state"] == "active" and api["good"]["errors"] == 0
        assert api["raiser"]["state"] == "active" and api["raiser"]["errors"] == 2
        assert api["hanger"]["errors"] == 2 and "timed out" in api["hanger"]["last_error"]
        for name in (broken_module, "sg_future_plugin", "future", "startup", "skills_raiser"):
            assert api[name]["state"] == "failed", name
        assert api["sg_future_plugin"]["source"] == "config"
        assert "wants plugin API 2.1, this gateway has 1.0" in api["sg_future_plugin"]["error"]
        assert "soulgate_startup" in api["startup"]["error"]


async def test_unknown_hook_name_is_refused(soulgate_gateway: GatewayFactory) -> None:
    class Typo:
        @hookimpl
        def soulgate_inbund(self, envelope: Envelope) -> None: ...

    async with soulgate_gateway(plugins=[("typo", Typo()), ("good", Good())]) as h:
        info = h.gateway.plugins.infos["typo"]
        assert info.state == "failed"
        assert "unknown hook(s) soulgate_inbund" in (info.error or "")
        assert await h.ask("/ping") == "pong"


async def test_bad_plugin_config_skips_the_plugin(soulgate_gateway: GatewayFactory) -> None:
    from pydantic import BaseModel, ConfigDict

    class Model(BaseModel):
        model_config = ConfigDict(extra="forbid")
        greeting: str = "hi"

    class Configured:
        @hookimpl
        def soulgate_config_model(self) -> type[BaseModel]:
            return Model

        @hookimpl
        def soulgate_skills(self) -> list[Skill]:
            async def hi(ctx: CommandContext) -> str:
                return str(ctx.services.plugin_config("configured").greeting)

            return [Command("hi", "greets", hi)]

    config = test_config({"plugins": {"config": {"configured": {"greting": "typo"}}}})
    async with soulgate_gateway(config=config, plugins=[("configured", Configured()), ("good", Good())]) as h:
        info = h.gateway.plugins.infos["configured"]
        assert info.state == "failed"
        assert "plugins.config.configured.greting: unknown key" in (info.error or "")
        assert "Unknown command" in await h.ask("/hi")
        assert await h.ask("/ping") == "pong"


def test_check_reports_plugins_that_cannot_load(
    tmp_path: Path, broken_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sg_skills_raiser.py").write_text(textwrap.dedent("""
        from gateway import hookimpl

        @hookimpl
        def soulgate_skills():
            raise KeyError("no skills today")
    """))
    cfg = tmp_path / "soulgate.toml"
    cfg.write_text(textwrap.dedent(f"""
        [plugins]
        modules = ["{broken_module}", "sg_future_plugin", "sg_skills_raiser"]
    """))
    assert soulgate(["--config", str(cfg), "check"]) == 1
    err = capsys.readouterr().err
    assert f"error: plugin '{broken_module}': import of {broken_module} failed: RuntimeError: broken at import" in err
    assert "error: plugin 'sg_future_plugin': wants plugin API 2.1, this gateway has 1.0; not loaded" in err
    assert "error: plugin 'sg_skills_raiser': failed in hook 'soulgate_skills': KeyError: 'no skills today'" in err
    # and `soulgate plugins` shows them as failed, with the reason
    assert soulgate(["--config", str(cfg), "plugins"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "failed" in lines[broken_module] and "config" in lines[broken_module]
    assert "error: wants plugin API 2.1" in out


async def test_hook_results_of_the_wrong_type_are_reported_and_ignored(
    soulgate_gateway: GatewayFactory,
) -> None:
    class Sloppy:
        @hookimpl
        def soulgate_inbound(self, envelope: Envelope) -> Any:
            return "not an envelope"

        @hookimpl
        async def soulgate_reply(self, reply: Reply) -> Any:
            return 42 if "pong" in reply.text else True  # True: keep it, like None

    class Shouty:
        @hookimpl(trylast=True)  # called after Sloppy: it must still get a real Reply
        def soulgate_reply(self, reply: Reply, envelope: Envelope | None) -> Reply:
            assert envelope is not None and envelope.text == "/ping"
            return Reply(text=reply.text.upper())

    async with soulgate_gateway(plugins=[("shouty", Shouty()), ("sloppy", Sloppy()), ("good", Good())]) as h:
        assert await h.ask("/ping") == "PONG"
        await h.idle()
        rows = await h.gateway.store.audit.recent(kind="plugin_error")
        assert sorted(r["detail"]["error"] for r in rows) == [
            "PluginError: plugin 'sloppy' failed in hook 'soulgate_inbound': returned str; "
            "expected Envelope, None or False",
            "PluginError: plugin 'sloppy' failed in hook 'soulgate_reply': returned int; "
            "expected Reply, None or False",
        ]
