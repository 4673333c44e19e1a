"""The plugin manager's rules: API versions, disabling, tracing, sync-only hooks, name clashes."""

from __future__ import annotations

import logging
import types

import pytest

from gateway import PLUGIN_API_VERSION, Command, CommandContext, Envelope, Skill, hookimpl
from gateway.plugins import PluginManager
from gateway.runtime import Gateway
from gateway.testing import installed_plugins, make_envelope, test_config


def _plugin(api: str | None = None, **hooks: object) -> types.ModuleType:
    mod = types.ModuleType("p")
    if api is not None:
        mod.SOULGATE_PLUGIN_API = api  # type: ignore[attr-defined]
    for name, fn in hooks.items():
        setattr(mod, name, hookimpl(fn))  # type: ignore[call-overload]
    return mod


@pytest.mark.parametrize(("wanted", "loads"), [
    (None, True), ("1.0", True), ("1", True), (PLUGIN_API_VERSION, True),
    ("1.9", False), ("2.0", False), ("0.9", False), ("banana", False), ("", False),
])
def test_api_version_check(wanted: str | None, loads: bool) -> None:
    pm = PluginManager(trace=False)
    pm.register(_plugin(wanted, soulgate_skills=lambda: []), "p")
    info = pm.infos["p"]
    assert (info.state == "active") is loads
    if not loads:
        assert info.error == f"wants plugin API {wanted}, this gateway has {PLUGIN_API_VERSION}; not loaded"
        assert pm.problems() == [f"plugin 'p': {info.error}"]


def test_disabled_plugins_are_listed_but_not_loaded() -> None:
    infos = {p.name: p for p in installed_plugins(test_config({"plugins": {"disabled": ["time"]}}))}
    assert infos["time"].state == "disabled" and infos["time"].hooks == []
    assert infos["core"].state == "active" and infos["core"].source == "built-in"
    gw = Gateway(test_config({"plugins": {"disabled": ["time"]}}), entry_points=False)
    gw.load_plugins()
    assert "time" not in gw.skills.commands and "current_time" not in gw.skills.tools


async def test_trace_logs_every_hook_call_with_its_duration(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SOULGATE_TRACE_HOOKS", "1")
    caplog.set_level(logging.INFO, logger="soulgate.plugins")
    pm = PluginManager()
    assert pm.trace
    pm.register(_plugin(soulgate_skills=lambda: [], soulgate_inbound=lambda envelope: None), "traced")
    pm.call_sync("soulgate_skills")
    await pm.call_chain("soulgate_inbound", "envelope", make_envelope("hi"))
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("hook soulgate_skills in plugin traced took ") and m.endswith(" ms") for m in lines)
    assert any(m.startswith("hook soulgate_inbound in plugin traced took ") for m in lines)
    monkeypatch.setenv("SOULGATE_TRACE_HOOKS", "0")
    assert not PluginManager().trace


def test_an_async_implementation_of_a_sync_only_hook_is_refused() -> None:
    async def soulgate_skills() -> list[Skill]:
        return []

    pm = PluginManager(trace=False)
    pm.register(_plugin(soulgate_skills=soulgate_skills), "hasty")
    assert pm.call_sync("soulgate_skills") == []
    info = pm.infos["hasty"]
    assert info.state == "failed" and info.error is not None and "must not be async" in info.error


def test_an_argument_the_hook_does_not_have_is_refused() -> None:
    def soulgate_inbound(envelope: Envelope, user: str) -> None: ...

    pm = PluginManager(trace=False)
    pm.register(_plugin(soulgate_inbound=soulgate_inbound), "wrongargs")
    info = pm.infos["wrongargs"]
    assert info.state == "failed" and "invalid plugin" in (info.error or "") and "user" in (info.error or "")


def test_two_plugins_with_the_same_command_are_reported_and_the_later_loaded_wins() -> None:
    async def mine(ctx: CommandContext) -> str:
        return "mine"

    gw = Gateway(test_config(), entry_points=False, extra_plugins=[
        ("myhelp", _plugin(soulgate_skills=lambda: [Command("help", "my help", mine)]))])
    problems = gw.load_plugins()
    assert "plugin 'core': command 'help' is already provided by plugin 'myhelp'; keeping the first" in problems
    assert gw.skills.commands["help"][0] == "myhelp"
