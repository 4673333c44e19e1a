"""The plugin manager: discovery, API-version checks, and isolated hook calls.

pluggy does registration and ordering. Calling is ours: each implementation
is called on its own (awaited if it is a coroutine function) under a timeout,
so that a plugin that raises or hangs is reported with its name and the hook
name while the other plugins, and the gateway, go on.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

__all__ = [
    "BUILTIN_PLUGINS",
    "PLUGIN_API_VERSION",
    "ErrorReporter",
    "PluginInfo",
    "PluginManager",
]

#: The plugin API this gateway offers. A plugin declares the version it was
#: written for as a module attribute ``SOULGATE_PLUGIN_API = "1.0"``; it loads
#: when the major versions match and its minor is not newer than ours.
PLUGIN_API_VERSION = "1.0"

#: Built-in behaviour, loaded through the same manager as any third-party plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "adapters.console",
    "adapters.slack",
    "adapters.telegram",
    "adapters.teams",
    "adapters.http",
    "adapters.email",
    "plugins.core",
    "plugins.time",
    "plugins.fetch_url",
    "plugins.memory",
    "agents.soul_agents",
    "plugins.default_route",
)

ENTRY_POINT_GROUP = "soulgate"
log = logging.getLogger("soulgate.plugins")

ErrorReporter = Callable[[str, str, BaseException, Any], Awaitable[None]]


@dataclass(slots=True)
class PluginInfo:
    """What ``soulgate plugins`` and ``/api/plugins`` show for one plugin."""

    name: str
    source: str  # "built-in" | "entry point" | "config"
    module: str
    version: str | None = None
    state: str = "active"  # "active" | "disabled" | "failed"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    #: hook failures (exceptions, timeouts) since start, and the last one
    errors: int = 0
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "module": self.module,
            "version": self.version,
            "state": self.state,
            "error": self.error,
            "hooks": self.hooks,
            "errors": self.errors,
            "last_error": self.last_error,
        }


def _api_compatible(wanted: str) -> bool:
    try:
        w_major, w_minor = (int(p) for p in [*wanted.split("."), "0"][:2])
        o_major, o_minor = (int(p) for p in PLUGIN_API_VERSION.split(".")[:2])
    except ValueError:
        return False
    return w_major == o_major and w_minor <= o_minor


class PluginManager:
    """Loads plugins and calls their hooks safely."""

    def __init__(
        self,
        *,
        disabled: Iterable[str] = (),
        hook_timeout: float = 30.0,
        trace: bool | None = None,
    ) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self.disabled = set(disabled)
        self.hook_timeout = hook_timeout
        self.trace = os.environ.get("SOULGATE_TRACE_HOOKS", "") not in ("", "0") if trace is None else trace
        self.infos: dict[str, PluginInfo] = {}
        self.error_reporter: ErrorReporter | None = None
        # Failures found before the gateway has a database (imports, sync hooks):
        # logged at once, audited and counted when flush_pending() runs after connect.
        self._pending: list[tuple[str, str, BaseException]] = []

    # -- loading -----------------------------------------------------------------

    def load_defaults(self, modules: Iterable[str] = (), *, entry_points: bool = True) -> None:
        """Built-ins, then installed entry points, then modules named in config."""
        for name in BUILTIN_PLUGINS:
            self.load_module(name, source="built-in", plugin_name=name.rsplit(".", 1)[-1])
        if entry_points:
            self.load_entry_points()
        for name in modules:
            self.load_module(name, source="config")

    def load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            version = ep.dist.version if ep.dist is not None else None
            self._load(ep.name, "entry point", ep.value, ep.load, version)

    def load_module(self, module: str, *, source: str, plugin_name: str | None = None) -> None:
        self._load(plugin_name or module, source, module, lambda: importlib.import_module(module), None)

    def register(self, obj: object, name: str, *, source: str = "config", version: str | None = None) -> None:
        """Register an already-imported plugin object (tests, the template)."""
        self._load(name, source, getattr(obj, "__name__", name), lambda: obj, version)

    def _load(
        self, name: str, source: str, module: str, loader: Callable[[], Any], version: str | None
    ) -> None:
        if name in self.infos and self.infos[name].state == "active":
            return  # the same plugin found twice (e.g. entry point and config)
        info = PluginInfo(name=name, source=source, module=module, version=version)
        self.infos[name] = info
        if name in self.disabled:
            info.state = "disabled"
            return
        try:
            obj = loader()
        except Exception as exc:  # an import error must not stop the gateway
            self._fail_load(info, f"import of {module} failed: {type(exc).__name__}: {exc}", exc)
            return
        wanted = getattr(obj, "SOULGATE_PLUGIN_API", None)
        if wanted is not None and not _api_compatible(str(wanted)):
            self._fail_load(
                info, f"wants plugin API {wanted}, this gateway has {PLUGIN_API_VERSION}; not loaded"
            )
            return
        if info.version is None and isinstance(obj, ModuleType):
            info.version = getattr(obj, "__version__", None)
        try:
            self._pm.register(obj, name=name)
        except Exception as exc:  # pluggy validates hook names and signatures
            self._fail_load(info, f"invalid plugin: {exc}", exc)
            return
        callers = self._pm.get_hookcallers(obj) or []
        # pluggy accepts an implementation of a hook nobody declared (it might be
        # declared later); for us that is a typo that would be silently ignored.
        unknown = sorted(h.name for h in callers if h.spec is None)
        if unknown:
            self._pm.unregister(name=name)
            self._fail_load(info, f"implements unknown hook(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(hookspecs.HOOK_NAMES)}")
            return
        info.hooks = sorted(h.name for h in callers if h.name.startswith("soulgate_"))

    def _fail_load(self, info: PluginInfo, message: str, cause: BaseException | None = None) -> None:
        info.state, info.error = "failed", message
        err = PluginError(info.name, "load", message)
        err.__cause__ = cause
        log.error("%s", err)
        self._pending.append((info.name, "load", err))

    def disable(self, name: str, reason: str) -> None:
        """Take a plugin out after it failed at start; none of its hooks is called again."""
        info = self.infos.get(name)
        if info is not None:
            info.state, info.error = "failed", reason
        if self._pm.get_plugin(name) is not None:
            self._pm.unregister(name=name)

    def is_active(self, name: str) -> bool:
        info = self.infos.get(name)
        return info is None or info.state == "active"  # None: registered by hand

    def hook_plugins(self, hook: str) -> list[str]:
        """The plugins implementing ``hook``, in call order."""
        return [impl.plugin_name for impl in self._impls(hook)]

    async def flush_pending(self) -> None:
        """Audit, count and announce the failures found before the database was there."""
        pending, self._pending = self._pending, []
        for plugin, hook, error in pending:
            await self.report(plugin, hook, error, None, logged=True)

    # -- introspection -------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        return list(self.infos.values())

    def problems(self) -> list[str]:
        """One line per failed plugin, for ``soulgate check`` (each starts with ``plugin '<name>'``)."""
        return [f"plugin {i.name!r}: {i.error}" for i in self.infos.values() if i.state == "failed"]

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        caller = getattr(self._pm.hook, hook)
        # pluggy calls implementations last-registered first, respecting
        # tryfirst/trylast; we keep that order.
        return list(reversed(caller.get_hookimpls()))

    # -- calling -------------------------------------------------------------------

    async def _call_one(
        self, impl: pluggy.HookImpl, hook: str, kwargs: dict[str, Any], envelope: Any
    ) -> tuple[bool, Any]:
        args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
        started = time.perf_counter()
        try:
            result = impl.function(**args)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.hook_timeout)
            return True, result
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            err = PluginError(impl.plugin_name, hook, f"timed out after {self.hook_timeout:g}s")
            err.__cause__ = exc
            await self.report(impl.plugin_name, hook, err, envelope)
            return False, None
        except Exception as exc:
            await self.report(impl.plugin_name, hook, exc, envelope)
            return False, None
        finally:
            if self.trace:
                log.info(
                    "hook %s in plugin %s took %.2f ms",
                    hook, impl.plugin_name, (time.perf_counter() - started) * 1000,
                )

    async def report(
        self, plugin: str, hook: str, error: BaseException, envelope: Any = None, *, logged: bool = False
    ) -> None:
        """Log, count and audit a plugin failure, then tell ``soulgate_error`` listeners."""
        what = str(error) if isinstance(error, PluginError) else f"{type(error).__name__}: {error}"
        if not logged:
            log.error("plugin %r failed in hook %r: %s", plugin, hook, what)
        info = self.infos.get(plugin)
        if info is not None and not logged:  # logged: counted where it was found
            info.errors += 1
            info.last_error = f"{hook}: {what}"
        if self.error_reporter is not None:
            try:
                await self.error_reporter(plugin, hook, error, envelope)
            except Exception:
                log.exception("error reporter failed")
        if hook == "soulgate_error":
            return
        for impl in self._impls("soulgate_error"):
            try:
                res = impl.function(
                    **{k: v for k, v in {"plugin": plugin, "hook": hook, "error": error,
                                         "envelope": envelope}.items() if k in impl.argnames}
                )
                if inspect.isawaitable(res):
                    await asyncio.wait_for(res, self.hook_timeout)
            except Exception:
                log.exception("plugin %r failed in soulgate_error", impl.plugin_name)

    async def call_each(self, hook: str, *, envelope: Any = None, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation; returns ``(plugin, result)`` for those that succeeded."""
        out: list[tuple[str, Any]] = []
        for impl in self._impls(hook):
            # ``envelope`` is both what failures are reported against and a hook argument.
            ok, result = await self._call_one(impl, hook, {"envelope": envelope, **kwargs}, envelope)
            if ok:
                out.append((impl.plugin_name, result))
        return out

    async def call_chain(
        self, hook: str, value_arg: str, value: Any, *, envelope: Any = None, **kwargs: Any
    ) -> tuple[Any, str | None]:
        """Pass ``value`` through every implementation in order.

        Returns the final value and, if an implementation returned ``False``,
        the name of the plugin that dropped it (the value is then ``None``).
        ``None`` and ``True`` keep the value; a result of another type than the
        value's is a plugin error and is ignored, so the next plugin still gets
        a well-formed value.
        """
        expected = type(value)
        for impl in self._impls(hook):
            args = {"envelope": envelope, **kwargs, value_arg: value}
            ok, result = await self._call_one(impl, hook, args, envelope)
            if not ok or result is None or result is True:
                continue
            if result is False:
                return None, impl.plugin_name
            if not isinstance(result, expected):
                await self.report(impl.plugin_name, hook, PluginError(
                    impl.plugin_name, hook,
                    f"returned {type(result).__name__}; expected {expected.__name__}, None or False",
                ), envelope)
                continue
            value = result
        return value, None

    def call_sync(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a sync-only hook (adapters, skills, config models); failures are recorded."""
        out: list[tuple[str, Any]] = []
        for impl in self._impls(hook):
            args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
            started = time.perf_counter()
            try:
                result = impl.function(**args)
            except Exception as exc:
                self._fail_sync(impl.plugin_name, hook, PluginError(impl.plugin_name, hook, exc), exc)
                continue
            finally:
                if self.trace:
                    log.info("hook %s in plugin %s took %.2f ms",
                             hook, impl.plugin_name, (time.perf_counter() - started) * 1000)
            if inspect.isawaitable(result):
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                self._fail_sync(impl.plugin_name, hook,
                                PluginError(impl.plugin_name, hook, "this hook must not be async"))
                continue
            out.append((impl.plugin_name, result))
        return out

    def _fail_sync(self, plugin: str, hook: str, err: PluginError, cause: BaseException | None = None) -> None:
        # A load-time hook that fails leaves the plugin half set up (no skills, no
        # config): take it out entirely rather than run it broken.
        err.__cause__ = cause
        log.error("%s", err)
        what = err.cause if isinstance(err.cause, str) else f"{type(err.cause).__name__}: {err.cause}"
        self.disable(plugin, f"failed in hook {hook!r}: {what}; not loaded")
        info = self.infos.get(plugin)
        if info is not None:
            info.errors += 1
            info.last_error = f"{hook}: {err}"
        self._pending.append((plugin, hook, err))

    def first_result(self, hook: str, **kwargs: Any) -> tuple[str, Any] | None:
        for plugin, result in self.call_sync(hook, **kwargs):
            if result is not None:
                return plugin, result
        return None
