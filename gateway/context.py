"""The pieces the :class:`~gateway.runtime.Gateway` hands out: the skill registry, the
adapter context, and the queue wake-up events. Kept apart so the wiring module stays short.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, suppress
from typing import TYPE_CHECKING, Any

from storage import leadership

from .adapter import Adapter, AdmitResult, WebHandler
from .envelope import Envelope
from .skills import Command, Tool

if TYPE_CHECKING:
    from .runtime import Gateway

__all__ = ["AdapterContextImpl", "SendingContext", "SkillRegistry", "WakeOne", "Wakeups"]


class SkillRegistry:
    """Commands and tools by name, with the plugin that owns each."""

    def __init__(self) -> None:
        self.commands: dict[str, tuple[str, Command]] = {}
        self.tools: dict[str, tuple[str, Tool]] = {}
        self.problems: list[str] = []

    def collect(self, results: Iterable[tuple[str, Any]]) -> None:
        for plugin, skills in results:
            for skill in skills or ():
                table: dict[str, Any]
                if isinstance(skill, Command):
                    table, kind = self.commands, "command"
                elif isinstance(skill, Tool):
                    table, kind = self.tools, "tool"
                else:
                    self.problems.append(f"plugin {plugin!r}: soulgate_skills returned {skill!r}")
                    continue
                if skill.name in table:
                    self.problems.append(
                        f"plugin {plugin!r}: {kind} {skill.name!r} is already provided by plugin "
                        f"{table[skill.name][0]!r}; keeping the first"
                    )
                    continue
                table[skill.name] = (plugin, skill)


class WakeOne:
    """An :class:`asyncio.Event` look-alike whose ``set()`` wakes one waiter, not all.

    Every NOTIFY used to wake every idle worker of every instance, and all but one ran
    a claim that found nothing: with 32 dispatch workers, 31 wasted statements per
    message (docs/performance.md, scale-out). Now a notification wakes one waiter, or,
    when none is waiting, is kept for the next ``wait()``; a worker that claimed a row
    calls ``set()`` again, so a burst fans out to the idle workers one claim at a time
    and costs at most one empty claim at its end.
    """

    def __init__(self) -> None:
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pending = False

    def set(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter whose wait timed out is skipped
                waiter.set_result(None)
                return
        self._pending = True

    def clear(self) -> None:
        self._pending = False

    def is_set(self) -> bool:
        return self._pending

    async def wait(self) -> None:
        if self._pending:
            self._pending = False
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
            with suppress(ValueError):
                self._waiters.remove(waiter)


class Wakeups:
    def __init__(self) -> None:
        self.inbox = WakeOne()
        self.outbox = WakeOne()


class AdapterContextImpl:
    """The :class:`gateway.AdapterContext` handed to each adapter."""

    def __init__(self, gw: Gateway, adapter: Adapter) -> None:
        self._gw = gw
        self._adapter = adapter
        self.instance_id = gw.instance_id
        self.services = gw.services
        self.log = logging.getLogger(f"soulgate.adapters.{adapter.channel}.{adapter.account}")
        self._leading: set[str] = set()  # names run_as_leader holds right now

    async def admit(self, envelope: Envelope) -> AdmitResult:
        return await self._gw.admit(envelope)

    async def remember_conversation(self, envelope: Envelope) -> None:
        async with self._gw.store.db.transaction() as conn:
            await self._gw.store.conversations.touch(conn, envelope)

    def add_route(self, method: str, path: str, handler: WebHandler) -> None:
        self._gw.public_routes.append((method.upper(), path, handler))

    def leadership(self, name: str) -> AbstractAsyncContextManager[None]:
        return leadership(self._gw.store.db, f"soulgate:{name}")

    async def run_as_leader(
        self, name: str, body: Callable[[], Awaitable[None]], *,
        on_error: Callable[[Exception], None] | None = None,
        backoff: float = 2.0, max_backoff: float = 30.0,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("run_as_leader needs a non-empty leadership name")
        if not 0 < backoff <= max_backoff:
            raise ValueError(f"need 0 < backoff <= max_backoff, got {backoff} and {max_backoff}")
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        delay = 0.0
        while not self._gw.stopping.is_set():
            # The lock's watcher cancels the task that entered leadership() when the lock's
            # connection dies. A task of its own per term keeps that cancel apart from ours
            # (stop): only our own cancel shows in ``me.cancelling()``.
            term = asyncio.create_task(self._lead(name, body), name=f"leader:{name}")
            began = loop.time()
            try:
                await term
                return  # the body is done; leaving leadership() released the lock
            except asyncio.CancelledError:
                if me is None or me.cancelling():
                    raise  # we are being stopped (cancelling us cancelled the term too)
                self.log.warning("lost leadership of %s (its database connection died); "
                                 "waiting to regain it", name)
            except Exception as exc:
                self._leader_failed(name, exc, on_error)
            if loop.time() - began >= max_backoff:
                delay = 0.0  # it ran well for a while: this is a fresh failure, not a streak
            delay = backoff if delay == 0 else min(max_backoff, delay * 2)
            with suppress(TimeoutError):  # instances do not retry in lockstep
                await asyncio.wait_for(self._gw.stopping.wait(), delay * random.uniform(0.8, 1.2))

    async def _lead(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        async with self.leadership(name):
            self._leading.add(name)
            try:
                await body()
            finally:
                self._leading.discard(name)

    def leads(self, name: str) -> bool:
        return name in self._leading

    def _leader_failed(self, name: str, exc: Exception, on_error: Callable[[Exception], None] | None) -> None:
        if on_error is None:
            self.log.error("leader %s failed (%s: %s); restarting", name, type(exc).__name__, exc)
            return
        try:
            on_error(exc)
        except Exception:
            self.log.exception("the error handler of leader %s failed", name)

    async def get_state(self, key: str) -> Any:
        return await self._gw.store.state.get(self._key(key))

    async def set_state(self, key: str, value: Any, *, expires_in: float | None = None) -> None:
        await self._gw.store.state.set(self._key(key), value, expires_in=expires_in)

    def _key(self, key: str) -> str:
        return f"adapter:{self._adapter.channel}:{self._adapter.account}:{key}"

    async def audit(self, kind: str, detail: dict[str, Any], envelope: Envelope | None = None) -> None:
        await self._gw.services.audit(
            kind, {"channel": self._adapter.channel, "account": self._adapter.account, **detail},
            plugin=self._adapter.channel, envelope=envelope,
        )

    async def ticks(self, interval: float) -> AsyncIterator[None]:
        while not self._gw.stopping.is_set():
            yield None
            with suppress(TimeoutError):
                await asyncio.wait_for(self._gw.stopping.wait(), interval)


class SendingContext(AdapterContextImpl):
    """The context :meth:`Adapter.bind` gets, in every role: state, audit, log, services.

    What sending needs, without what receiving does: a ``--role worker`` gateway
    must not mount routes or lead pollers, and an adapter that tries from ``bind``
    fails loudly in every role, not only once roles are split in production.
    """

    def _refuse(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"{self._adapter.channel}/{self._adapter.account}: {what} belongs in Adapter.start(), "
            "not bind(): the context bind() gets only sends (a --role worker gateway never receives)"
        )

    async def admit(self, envelope: Envelope) -> AdmitResult:
        raise self._refuse("admit")

    async def remember_conversation(self, envelope: Envelope) -> None:
        raise self._refuse("remember_conversation")

    def add_route(self, method: str, path: str, handler: WebHandler) -> None:
        raise self._refuse("add_route")

    def leadership(self, name: str) -> AbstractAsyncContextManager[None]:
        raise self._refuse("leadership")

    async def run_as_leader(
        self, name: str, body: Callable[[], Awaitable[None]], *,
        on_error: Callable[[Exception], None] | None = None,
        backoff: float = 2.0, max_backoff: float = 30.0,
    ) -> None:
        raise self._refuse("run_as_leader")
