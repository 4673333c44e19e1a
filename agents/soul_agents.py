"""The SOUL agents plugin: answers every message that is not a command with the routed agent.

Loaded as a built-in plugin; its ``soulgate_responder`` overrides the
placeholder default route. The responder keeps the loaded SOUL files by path,
so a reload that finds a broken file keeps that file's previous version (and
reports it with file and line) while the other files are reloaded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway import AuditEvent, Reply, Responder, Services, Tool, Turn, TurnResult, hookimpl

from .llm import LLM, LLMUnavailable, preload_litellm
from .memory import Memory
from .soul import Soul, SoulError, builtin_soul, check_soul, load_soul_dir

__all__ = ["NO_MODEL_TEXT", "AgentResponder", "check_config", "skill_names"]

SOULGATE_PLUGIN_API = "1.0"
log = logging.getLogger("soulgate.agents")

NO_MODEL_TEXT = (
    "No language model is configured yet, so I can't answer messages. "
    "Add one to the config file (config/soulgate.toml), for example:\n\n"
    "```toml\n[models.default]\nmodel = \"openai/gpt-4o-mini\"\napi_key = \"${OPENAI_API_KEY}\"\n```\n\n"
    "then restart the gateway or reload it (`POST /api/reload` on the admin port, or SIGHUP). "
    "Commands work meanwhile: send /help."
)


def skill_names(tools: Mapping[str, tuple[str, Tool]]) -> set[str]:
    """What a SOUL's ``skills`` may name: a tool, or a plugin that provides tools."""
    return set(tools) | {plugin for plugin, _tool in tools.values()}


def _soul_dir(config: Any) -> Path:
    return Path(config.resolve(config.agents.soul_dir))


def _read_souls(config: Any) -> tuple[dict[Path, Soul], list[SoulError]]:
    """The SOUL files; a missing directory is a problem only when ``soul_dir`` was configured
    (run from anywhere with no config, the built-in default agent answers)."""
    soul_dir = _soul_dir(config)
    if not soul_dir.exists() and "soul_dir" not in config.agents.model_fields_set:
        return {}, []
    return load_soul_dir(soul_dir)


def check_config(config: Any, tools: Mapping[str, tuple[str, Tool]]) -> list[str]:
    """Every problem with the SOUL files and the agent settings, for ``soulgate check``."""
    souls, errors = _read_souls(config)
    problems = [str(e) for e in errors]
    models, skills = set(config.models), skill_names(tools)
    for soul in souls.values():
        problems.extend(str(e) for e in check_soul(soul, models, skills))
    names = {s.name for s in souls.values()}
    if souls and config.agents.default not in names:
        problems.append(f"agents.default: no SOUL file in {_soul_dir(config)} defines agent "
                        f"{config.agents.default!r}")
    if souls or not errors:  # a missing directory is reported once, above
        for i, route in enumerate(config.routes):
            if route.agent not in names | {config.agents.default}:
                problems.append(f"routes[{i}].agent: no SOUL file defines agent {route.agent!r}")
    emb = config.agents.embedding_model
    if emb and "/" not in emb and emb not in models:
        problems.append(f"agents.embedding_model: unknown model alias {emb!r} "
                        f"(configured [models]: {', '.join(sorted(models)) or 'none'})")
    return problems


class AgentResponder:
    """Resolves the route's agent to a loaded SOUL and runs the turn."""

    name = "soul-agents"

    def __init__(self, services: Services) -> None:
        self.services = services
        self._by_path: dict[Path, Soul] = {}
        self.souls: dict[str, Soul] = {}
        self.problems: list[str] = []
        self.llm: LLM | None = None
        self._warming: asyncio.Task[None] | None = None
        self.memory = Memory(services, lambda: self.llm)
        self.load()

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> list[str]:
        """(Re)read the SOUL directory; returns the problems (each with file and line)."""
        config = self.services.config
        found, errors = _read_souls(config)
        problems = [str(e) for e in errors]
        broken = {e.path for e in errors}
        models, skills = set(config.models), skill_names(self.services.tools())
        accepted: dict[Path, Soul] = {}
        for path, soul in found.items():
            issues = check_soul(soul, models, skills)
            if issues:
                problems.extend(str(e) for e in issues)
                broken.add(path)
                continue
            accepted[path] = soul
        for path in broken:
            previous = self._by_path.get(path)
            if previous is not None and path not in accepted and path.exists():
                accepted[path] = previous
                problems.append(f"{path}: keeping the previous version of agent {previous.name!r}")
        by_name: dict[str, Soul] = {}
        for path, soul in sorted(accepted.items()):
            if soul.name in by_name:  # a kept old version whose name a new file took over
                problems.append(f"{path}: agent {soul.name!r} is already defined in {by_name[soul.name].path}")
                continue
            by_name[soul.name] = soul
        self._by_path = {s.path: s for s in by_name.values()}
        default = config.agents.default
        if default not in by_name and not found and not errors:
            by_name[default] = builtin_soul(default)  # no SOUL files at all: still answer
        self.souls = by_name
        self.problems = problems
        self._sync_llm()
        return problems

    def _sync_llm(self) -> None:
        config = self.services.config
        direct = [m for s in self.souls.values() for m in s.chain() if "/" in m]
        if config.agents.embedding_model and "/" in config.agents.embedding_model:
            direct.append(config.agents.embedding_model)
        fresh = LLM(config.models, direct)
        if self.llm is None or self.llm.key != fresh.key:
            old, self.llm = self.llm, fresh
            if old is not None:
                old.close()

    async def reload(self, services: Services) -> list[str]:
        try:
            problems = self.load()
        except Exception as exc:  # e.g. the directory became unreadable: keep what is loaded
            log.exception("reloading the SOUL files failed")
            return [f"{_soul_dir(services.config)}: reload failed, keeping the loaded agents: "
                    f"{type(exc).__name__}: {exc}"]
        for p in problems:
            log.error("SOUL file problem: %s", p)
        return problems

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "description": s.description, "file": str(s.path), "models": s.chain(),
             "skills": list(s.skills)}
            for s in sorted(self.souls.values(), key=lambda s: s.name)
        ]

    def warm(self) -> None:
        """Build the Router in the background (after the import), so the first turn need not."""
        async def build(llm: LLM) -> None:
            try:
                await llm.router()
            except LLMUnavailable:
                pass  # closed before it was ready
            except Exception:  # the first turn will try again and report it
                log.warning("could not prepare the LLM router", exc_info=True)

        if self.llm is not None and self._warming is None:
            self._warming = asyncio.get_running_loop().create_task(build(self.llm), name="soulgate-llm-warm")

    def close(self) -> None:
        # The warm-up is not cancelled: the Router it builds in a thread would be orphaned
        # with its callbacks still hooked into litellm; a closed LLM discards it instead.
        if self.llm is not None:
            self.llm.close()

    # -- answering -------------------------------------------------------------------------

    def _has_any_model(self, soul: Soul | None) -> bool:
        if self.services.config.models:
            return True
        return soul is not None and any("/" in m for m in soul.chain())

    async def respond(self, turn: Turn) -> TurnResult:
        agent = turn.route.agent
        soul = self.souls.get(agent)
        if not self._has_any_model(soul) or self.llm is None:
            return TurnResult(replies=[Reply(text=NO_MODEL_TEXT)],
                              audit=[AuditEvent("agent_no_model", {"agent": agent})])
        if soul is None:
            text = (f"Sorry, the agent **{agent}** is not available: its SOUL file is missing or broken. "
                    "The operator can run `soulgate check` to see why.")
            return TurnResult(replies=[Reply(text=text)], audit=[AuditEvent("agent_missing", {"agent": agent})])
        from .agent import run_turn  # imported by the first turn (or preloaded), not at start

        return await run_turn(soul, turn, llm=self.llm, memory=self.memory,
                              tool_timeout=self.services.config.plugins.hook_timeout)


#: What a turn imports that a start does not need: the turn loop and jsonschema (tool
#: arguments). Preloaded in a thread when a model is configured, like litellm, so the
#: first turn does not import them on the event loop.
_TURN_MODULES = ("agents.agent", "jsonschema")
#: seconds the preload waits for litellm's import before importing the turn modules anyway
_PRELOAD_WAIT = 120.0


def _preload_turn_modules(after: concurrent.futures.Future[Any]) -> None:
    # After litellm's import, which a first turn waits for anyway, so that this does not
    # compete with the start for the interpreter lock. A done callback rather than
    # concurrent.futures.wait(): it also fires when the future is cancelled.
    done = threading.Event()
    after.add_done_callback(lambda _f: done.set())

    def run() -> None:
        done.wait(_PRELOAD_WAIT)
        if after.cancelled():  # the gateway stopped before litellm was there: no turn is coming
            return
        for name in _TURN_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # the first turn imports it again and reports the error
                log.warning("could not preload %s", name, exc_info=True)

    # Not a daemon: a daemon thread frozen at interpreter exit in the middle of an import
    # keeps the import lock, and the next import during finalization (litellm's clients
    # import in __del__) would hang the exit. So an exit waits for these imports instead.
    threading.Thread(target=run, name="soulgate-agents-import").start()


@hookimpl
def soulgate_responder(services: Services) -> Responder:
    responder = AgentResponder(services)
    services.provide("agents", responder)
    services.provide("memory", responder.memory)
    return responder


@hookimpl
async def soulgate_startup(services: Services) -> None:
    responder = services.provided("agents")
    if not isinstance(responder, AgentResponder):
        return
    if responder.llm is not None and (services.config.models or responder.llm.extra_models):
        # litellm, then the turn's modules, in threads: the first turn does not wait for them
        _preload_turn_modules(preload_litellm())
        responder.warm()
    for problem in responder.problems:
        log.error("SOUL file problem (the file is skipped): %s", problem)
    try:
        for problem in responder.problems:
            await services.audit("soul_error", {"problem": problem}, plugin="soul_agents")
    except Exception:  # failing here would disable the plugin: the problems are logged already
        log.exception("could not audit SOUL file problems")


@hookimpl
def soulgate_shutdown(services: Services) -> None:
    responder = services.provided("agents")
    if isinstance(responder, AgentResponder):
        responder.close()
