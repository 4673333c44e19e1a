"""The wiring: one :class:`Gateway` owns storage, plugins, adapters, workers and listeners.

Start order matters: storage and plugins first (so nothing is admitted before
the pipeline can handle it), then workers, then adapters (which start
receiving), then the public listener with the routes adapters mounted, then
the admin endpoint. Stop is the reverse, with a grace period in which
in-flight turns and sends finish; what is still running after it is
cancelled and stays claimable (its lease expires and any instance takes it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import ValidationError

from storage import (
    RELOAD_CHANNEL,
    Database,
    PendingChunk,
    Store,
    keep_queue_stats_fresh,
    keep_state_pruned,
    listen_forever,
    start_embedded,
)

from .adapter import Adapter, AdapterSpec, AdmitResult, WebHandler
from .config import Config, format_validation_error
from .context import AdapterContextImpl, SendingContext, SkillRegistry, Wakeups
from .delivery import Deliverer
from .dispatch import Dispatcher
from .envelope import Envelope, Reply, ReplyAddress
from .errors import ConfigError
from .metrics import Metrics
from .plugins import PluginManager
from .services import Services
from .turn import Responder

__all__ = ["Gateway", "Role", "SkillRegistry", "embedded_data_dir"]

log = logging.getLogger("soulgate")
Role = Literal["all", "ingress", "worker"]


def embedded_data_dir(config: Config) -> Path:
    if config.database.data_dir:
        return config.resolve(config.database.data_dir)
    return Path(platformdirs.user_data_dir("soulgate")) / "pgdata"


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        role: Role = "all",
        plugins: PluginManager | None = None,
        extra_plugins: Iterable[tuple[str, object]] = (),
        entry_points: bool = True,
        database_url: str | None = None,
    ) -> None:
        self.config = config
        self.role = role
        self.instance_id = config.gateway.instance_name or f"{socket.gethostname()}:{os.getpid()}"
        self.metrics = Metrics()
        self.plugins = plugins or PluginManager(
            disabled=config.plugins.disabled, hook_timeout=config.plugins.hook_timeout
        )
        self._extra_plugins = list(extra_plugins)
        self._entry_points = entry_points
        self._database_url = database_url
        self.store: Store = None  # type: ignore[assignment]  # set in start()
        self.services = Services(self)
        self.skills = SkillRegistry()
        self.responder: tuple[str, Responder] = ("", None)  # type: ignore[assignment]
        self.plugin_configs: dict[str, Any] = {}
        self.adapter_specs: dict[str, tuple[str, AdapterSpec]] = {}
        self.adapters: dict[tuple[str, str], Adapter] = {}
        self.public_routes: list[tuple[str, str, WebHandler]] = []
        self.wakeups = Wakeups()
        self.stopping = asyncio.Event()
        self.ready = False
        self.db_ok = True
        self.admin_token: str = ""
        self.public_port: int | None = None
        self.admin_port: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._reloading = asyncio.Lock()
        self._reloads: set[asyncio.Task[Any]] = set()  # reloads other instances asked for
        self._workers: list[asyncio.Task[Any]] = []
        self._runners: list[Any] = []
        self._started_adapters: list[Adapter] = []
        self._plans: list[tuple[AdapterSpec, str, Any]] = []
        #: turns and sends running now (drained on stop)
        self.inflight = 0

    # -- plugins and adapters (no database needed; also used by `soulgate check`) --------

    def load_plugins(self, *, build: bool = True) -> list[str]:
        """Load plugins, their config tables, skills, responder and channel specs; returns problems."""
        self.plugins.error_reporter = self._report_plugin_error
        self.plugins.load_defaults(self.config.plugins.modules, entry_points=self._entry_points)
        for name, obj in self._extra_plugins:
            self.plugins.register(obj, name)
        problems: list[str] = []
        for plugin, model in self.plugins.call_sync("soulgate_config_model"):
            if model is None:
                continue
            raw = self.config.plugins.config.get(plugin, {})
            try:
                self.plugin_configs[plugin] = model.model_validate(raw)
            except ValidationError as exc:
                # A plugin with a bad table is skipped, not run half-configured.
                lines = format_validation_error(exc, f"plugins.config.{plugin}")
                self.plugins.disable(plugin, "invalid config: " + "; ".join(lines))
        for name in self.config.plugins.config:
            if name not in self.plugins.infos:
                problems.append(f"plugins.config.{name}: no plugin named {name!r} is loaded")
        self.skills = SkillRegistry()
        self.skills.collect(self.plugins.call_sync("soulgate_skills"))
        problems.extend(self.skills.problems)
        found = self.plugins.first_result("soulgate_responder", services=self.services)
        if found is None:
            problems.append("no plugin provides a responder (soulgate_responder)")
        else:
            self.responder = found
        for plugin, specs in self.plugins.call_sync("soulgate_adapters"):
            for spec in specs or ():
                if spec.channel in self.adapter_specs:
                    problems.append(
                        f"plugin {plugin!r}: channel {spec.channel!r} is already provided by "
                        f"plugin {self.adapter_specs[spec.channel][0]!r}"
                    )
                    continue
                self.adapter_specs[spec.channel] = (plugin, spec)
        self._drop_failed_plugins()
        problems[:0] = self.plugins.problems()
        if build:
            problems.extend(self.build_adapters())
        else:
            self._plans, plan_problems = self.plan_adapters()
            problems.extend(plan_problems)
        return problems

    def _drop_failed_plugins(self) -> None:
        """Forget what plugins that failed after loading offered (skills, responder, channels)."""
        active = self.plugins.is_active
        for table in (self.skills.commands, self.skills.tools):
            for key in [k for k, (plugin, _s) in table.items() if not active(plugin)]:
                del table[key]
        if self.responder[0] and not active(self.responder[0]):
            found = self.plugins.first_result("soulgate_responder", services=self.services)
            self.responder = found or ("", None)  # type: ignore[assignment]
        self.adapters = {
            key: a for key, a in self.adapters.items()
            if active(self.adapter_specs.get(key[0], ("", None))[0])
        }

    def build_adapters(self) -> list[str]:
        """Validate every ``[channels.*.*]`` table, then build its adapter; returns problems."""
        plans, problems = self.plan_adapters()
        return problems + self.instantiate_adapters(plans)

    def plan_adapters(self) -> tuple[list[tuple[AdapterSpec, str, Any]], list[str]]:
        """Validate the channel tables against each channel's model, without building anything.

        Cheap (no platform SDK is imported), so a bad table is refused before the
        database is touched.
        """
        plans: list[tuple[AdapterSpec, str, Any]] = []
        problems: list[str] = []
        for channel, accounts in self.config.channels.items():
            if channel not in self.adapter_specs:
                known = ", ".join(sorted(self.adapter_specs)) or "none"
                problems.append(f"channels.{channel}: no plugin provides this channel (known: {known})")
                continue
            _plugin, spec = self.adapter_specs[channel]
            for account, raw in accounts.items():
                if not isinstance(raw, dict):
                    problems.append(f"channels.{channel}.{account}: must be a table")
                    continue
                if raw.get("enabled", True) is False:
                    continue
                try:
                    cfg = spec.validate({k: v for k, v in raw.items() if k != "enabled"})
                except ValidationError as exc:
                    problems.extend(format_validation_error(exc, f"channels.{channel}.{account}"))
                    continue
                plans.append((spec, account, cfg))
        return plans, problems

    def instantiate_adapters(self, plans: list[tuple[AdapterSpec, str, Any]]) -> list[str]:
        """Build the planned adapters (this imports the platform SDKs they need)."""
        problems: list[str] = []
        for spec, account, cfg in plans:
            try:
                self.adapters[(spec.channel, account)] = spec.factory(account, cfg)
            except (ValueError, ConfigError) as exc:
                problems.append(f"channels.{spec.channel}.{account}: {exc}")
        return problems

    def add_adapter(self, adapter: Adapter) -> None:
        """Add an adapter built by hand (the console in ``soulgate chat``, tests)."""
        self.adapters[(adapter.channel, adapter.account)] = adapter

    def delivery_channels(self) -> list[str]:
        return sorted({c for c, _a in self.adapters})

    # -- agents: checked by `soulgate check`, reloaded without a restart --------------------------

    def check_extra(self) -> list[str]:
        """SOUL files and agent settings: bad YAML, unknown keys, unknown model aliases, skills
        no plugin provides (each with file and line), agents that routes name but no file defines."""
        from agents import check_config

        return check_config(self.config, self.skills.tools)

    async def reload(self, *, requested_by: str | None = None) -> dict[str, Any]:
        """Re-read routes, ``[agents]``, ``[models]`` and the SOUL files (admin reload, SIGHUP).

        A config file that no longer validates changes nothing; a broken SOUL file
        keeps its previous version and is reported with file and line. ``requested_by``:
        the instance whose ``POST /api/reload?everywhere=true`` asked for it (audited).
        """
        async with self._reloading:  # SIGHUP, admin and broadcast reloads one after the other
            result = await self._reload()
        result["instance"] = self.instance_id
        if requested_by is not None:
            result["requested_by"] = requested_by
        if result["reloaded"]:  # (a rejected config file was logged as such)
            log.info("reloaded (problems: %d%s)%s", len(result["problems"]),
                     f"; restart needed for {', '.join(result['needs_restart'])}" if result["needs_restart"] else "",
                     f", as instance {requested_by} asked" if requested_by else "")
        with suppress(Exception):
            await self.services.audit("reload", result)
        return result

    async def ask_others_to_reload(self) -> None:
        """Ask every other instance on this database to reload (each reads its own files);
        raises when Postgres cannot be reached. Instances that are down reload when they start."""
        await self.store.db.notifier.broadcast(RELOAD_CHANNEL, self.instance_id)

    def _reload_requested(self, sender: str) -> None:
        """Another instance reloaded and asked every instance to (listener callback)."""
        task = asyncio.get_running_loop().create_task(self.reload(requested_by=sender), name="reload")
        self._reloads.add(task)  # referenced until done, so it is not collected midway
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> dict[str, Any]:
        needs_restart: list[str] = []
        reloaded = ["souls"]
        if self.config.source is not None:
            from .config import load_config

            try:
                fresh = await asyncio.to_thread(load_config, self.config.source)
            except ConfigError as exc:
                log.error("reload rejected, nothing changed: %s", "; ".join(exc.problems))
                return {"ok": False, "reloaded": [], "problems": exc.problems}
            live = ("routes", "agents", "models")
            needs_restart = [k for k in type(fresh).model_fields
                             if k not in (*live, "source", "base_dir") and getattr(fresh, k) != getattr(self.config, k)]
            self.config = self.config.model_copy(update={k: getattr(fresh, k) for k in live})
            reloaded[:0] = live
        problems: list[str] = []
        reload_agents = getattr(self.responder[1], "reload", None)
        if reload_agents is not None:
            problems.extend(await reload_agents(self.services))
        return {"ok": not problems, "reloaded": reloaded, "problems": problems, "needs_restart": needs_restart}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        problems = self.load_plugins(build=False)
        fatal = [p for p in problems if not p.startswith("plugin ")]
        for p in problems:
            log.error("%s", p)
        if fatal:
            raise ConfigError(fatal)
        await self._connect()
        await self._ensure_admin_token()
        from .http import start_admin, start_public  # aiohttp.web only when serving

        if self.config.admin.enabled:
            # Up before the platform SDKs load, so /healthz answers (and /readyz says 503) meanwhile.
            self._runners.append(await start_admin(self))
        # Building adapters imports their SDKs (seconds for some): off the event loop.
        build_problems = await asyncio.to_thread(self.instantiate_adapters, self._plans)
        if build_problems:
            for p in build_problems:
                log.error("%s", p)
            raise ConfigError(build_problems)
        await self.plugins.flush_pending()  # audit and count load-time plugin failures
        expected = self.plugins.hook_plugins("soulgate_startup")
        started = {p for p, _ in await self.plugins.call_each("soulgate_startup", services=self.services)}
        for name in expected:
            if name not in started:
                self.plugins.disable(name, "failed in soulgate_startup; disabled")
        self._drop_failed_plugins()
        for adapter in self.adapters.values():
            # Every role sends (a worker through adapters it never starts): the sending
            # context first, before a worker can claim a row or an admin call can send.
            await adapter.bind(SendingContext(self, adapter))
        self._tasks.append(asyncio.create_task(listen_forever(self.store.db, {
            "soulgate_inbox": self.wakeups.inbox.set,
            "soulgate_outbox": self.wakeups.outbox.set,
        }, messages={RELOAD_CHANNEL: self._reload_requested}), name="listen"))
        if self.role in ("all", "worker"):
            # the claims' cached plans must not stay those of an empty table (storage/planner_stats.py)
            self._tasks.append(asyncio.create_task(keep_queue_stats_fresh(self.store.db), name="queue-stats"))
            # adapter state written with an expiry (storage/state.py) is deleted once it expired
            self._tasks.append(asyncio.create_task(keep_state_pruned(self.store.db), name="state-prune"))
            self._start_workers()
        if self.role in ("all", "ingress"):
            for adapter in self.adapters.values():
                await adapter.start(AdapterContextImpl(self, adapter))
                self._started_adapters.append(adapter)
        if self.public_routes or self.config.http.enabled:
            if self.config.http.enabled is not False:
                self._runners.append(await start_public(self))
        self.ready = True
        self.metrics.ready.set(1)
        log.info("soulgate %s ready (role %s, %d adapters)", self.instance_id, self.role, len(self.adapters))

    async def _connect(self) -> None:
        url = self._database_url or self.config.database.url.get_secret_value()
        if not url:
            data_dir = embedded_data_dir(self.config)
            log.info("no database.url: using embedded Postgres in %s", data_dir)
            url = await asyncio.to_thread(start_embedded, data_dir)
        db = Database(
            url, pool_min=self.config.database.pool_min, pool_max=self.config.database.pool_max,
            timeout=self.config.database.connect_timeout,
        )
        await db.connect()
        self.store = Store(db)
        batcher = self.store.inbox.admissions
        self.metrics.watch_admissions(lambda: (batcher.statements, batcher.events))

    async def _ensure_admin_token(self) -> None:
        configured = self.config.admin.token.get_secret_value()
        if configured:
            self.admin_token = configured
            return
        fresh = secrets.token_urlsafe(32)
        self.admin_token = str(await self.store.state.set_if_absent("admin_token", fresh))
        if self.admin_token == fresh and self.config.admin.enabled:
            # Printed once, at the first start; `soulgate admin-token` shows it again.
            print(f"soulgate: generated admin token (store it safely): {fresh}", flush=True)

    def _start_workers(self) -> None:
        dispatcher, deliverer = Dispatcher(self), Deliverer(self)
        for i in range(self.config.workers.dispatch):
            self._workers.append(asyncio.create_task(dispatcher.worker(f"{self.instance_id}/d{i}")))
        for i in range(self.config.workers.delivery):
            self._workers.append(asyncio.create_task(deliverer.worker(f"{self.instance_id}/s{i}")))

    async def stop(self) -> None:
        self.stopping.set()
        self.ready = False
        self.metrics.ready.set(0)
        for adapter in reversed(self._started_adapters):
            try:
                await asyncio.wait_for(adapter.stop(), 10)
            except Exception:
                log.exception("adapter %s/%s did not stop cleanly", adapter.channel, adapter.account)
        self._started_adapters.clear()
        if self._workers:
            # Let in-flight turns and sends finish within the grace period.
            await self._drain(self.config.gateway.shutdown_grace_seconds)
        running = [*self._workers, *self._tasks, *self._reloads]
        for task in running:
            task.cancel()
        for task in running:
            with suppress(BaseException):
                await task
        self._workers.clear()
        self._tasks.clear()
        for adapter in self.adapters.values():  # started or not: workers send through all of them
            try:
                await asyncio.wait_for(adapter.close(), 10)
            except Exception:
                log.exception("adapter %s/%s did not close cleanly", adapter.channel, adapter.account)
        for runner in reversed(self._runners):
            with suppress(Exception):
                await runner.cleanup()
        self._runners.clear()
        if self.store is not None:
            await self.plugins.call_each("soulgate_shutdown", services=self.services)
            await self.store.db.close()

    async def _drain(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.inflight and loop.time() < deadline:  # noqa: ASYNC110 - counter, not an event
            await asyncio.sleep(0.05)
        if self.inflight:
            log.warning("%d turns or sends still running after %gs; they stay claimable", self.inflight, grace)

    # -- the pipeline's edges -----------------------------------------------------------------

    async def admit(self, envelope: Envelope) -> AdmitResult:
        if not envelope.text.strip() and not envelope.segments:
            return AdmitResult(inbox_id="", created=False)  # empty: ignored, nothing stored
        started = time.perf_counter()
        inbox_id, created = await self.store.inbox.admit(envelope)
        self.metrics.admit_seconds.labels(envelope.channel).observe(time.perf_counter() - started)
        (self.metrics.admitted if created else self.metrics.duplicates).labels(envelope.channel).inc()
        return AdmitResult(inbox_id=inbox_id, created=created)

    async def send_proactive(self, target: ReplyAddress | str, reply: Reply | str) -> list[int]:
        if isinstance(target, str):
            address = await self.store.conversations.address(target)
            if address is None:
                raise KeyError(f"no stored conversation {target!r}")
            destination = target
        else:
            address, destination = target, f"{target.channel}:{target.account}:proactive"
        transformed, _ = await self.plugins.call_chain(
            "soulgate_reply", "reply", Reply(text=reply) if isinstance(reply, str) else reply,
            envelope=None, services=self.services,
        )
        reply = transformed if isinstance(transformed, Reply) else Reply(text=str(reply))
        adapter = self.adapters.get((address.channel, address.account))
        if adapter is None:
            raise KeyError(f"no adapter for {address.channel}/{address.account}")
        chunks = [
            PendingChunk(seq=i, address=address, destination=destination, reply=c)
            for i, c in enumerate(adapter.render(reply))
        ]
        return await self.store.outbox.enqueue(chunks, self.config.delivery.ttl_seconds)

    async def wait_idle(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - deadline, not a cancel
        """Until no inbox row is live and no outbox row is pending (for chat and tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            inbox = await self.store.inbox.counts()
            outbox = await self.store.outbox.counts()
            if not any(inbox.values()) and not outbox["pending"] and not outbox["sending"]:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"gateway not idle after {timeout}s: inbox {inbox}, outbox {outbox}")
            await asyncio.sleep(0.05)

    # -- health ---------------------------------------------------------------------------------

    def note_db_trouble(self, exc: BaseException) -> None:
        if self.db_ok:
            log.warning("database trouble: %s: %s; backing off", type(exc).__name__, exc)
        self.db_ok = False

    def note_db_ok(self) -> None:
        if not self.db_ok:
            log.info("database reachable again")
        self.db_ok = True

    async def _report_plugin_error(self, plugin: str, hook: str, error: BaseException, envelope: Any) -> None:
        self.metrics.plugin_errors.labels(plugin, hook).inc()
        if self.store is None:
            return
        with suppress(Exception):
            await self.services.audit(
                "plugin_error", {"hook": hook, "error": f"{type(error).__name__}: {error}"},
                plugin=plugin, envelope=envelope if isinstance(envelope, Envelope) else None,
            )

    async def status(self) -> dict[str, Any]:
        inbox = await self.store.inbox.counts()
        outbox = await self.store.outbox.counts()
        for status, n in inbox.items():
            self.metrics.queue_depth.labels("inbox", status).set(n)
        for status, n in outbox.items():
            self.metrics.queue_depth.labels("outbox", status).set(n)
        return {
            "instance": self.instance_id,
            "role": self.role,
            "uptime_seconds": round(self.services.uptime(), 1),
            "ready": self.ready,
            "database": {"ok": self.db_ok, "url": self.store.db.safe_url},
            "adapters": [
                {"channel": c, "account": a, "started": ad in self._started_adapters, **ad.status()}
                for (c, a), ad in sorted(self.adapters.items())
            ],
            "queues": {"inbox": inbox, "outbox": outbox},
            "responder": self.responder[0],
            "agents": getattr(self.responder[1], "describe", list)(),
            "plugins": [p.to_json() for p in self.plugins.plugins()],
        }
