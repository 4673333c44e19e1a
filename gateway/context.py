"""The pieces the :class:`~gateway.runtime.Gateway` hands out: the skill registry, the
adapter context, and the queue wake-up events. Kept apart so the wiring module stays short.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, suppress
from typing import TYPE_CHECKING, Any

from storage import leadership

from .adapter import Adapter, AdmitResult, WebHandler
from .envelope import Envelope
from .skills import Command, Tool

if TYPE_CHECKING:
    from .runtime import Gateway

__all__ = ["AdapterContextImpl", "SkillRegistry", "Wakeups"]


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


class Wakeups:
    def __init__(self) -> None:
        self.inbox = asyncio.Event()
        self.outbox = asyncio.Event()


class AdapterContextImpl:
    """The :class:`gateway.AdapterContext` handed to each adapter."""

    def __init__(self, gw: Gateway, adapter: Adapter) -> None:
        self._gw = gw
        self._adapter = adapter
        self.instance_id = gw.instance_id
        self.services = gw.services
        self.log = logging.getLogger(f"soulgate.adapters.{adapter.channel}.{adapter.account}")

    async def admit(self, envelope: Envelope) -> AdmitResult:
        return await self._gw.admit(envelope)

    async def remember_conversation(self, envelope: Envelope) -> None:
        async with self._gw.store.db.transaction() as conn:
            await self._gw.store.conversations.touch(conn, envelope)

    def add_route(self, method: str, path: str, handler: WebHandler) -> None:
        self._gw.public_routes.append((method.upper(), path, handler))

    def leadership(self, name: str) -> AbstractAsyncContextManager[None]:
        return leadership(self._gw.store.db, f"soulgate:{name}")

    async def get_state(self, key: str) -> Any:
        return await self._gw.store.state.get(self._key(key))

    async def set_state(self, key: str, value: Any) -> None:
        await self._gw.store.state.set(self._key(key), value)

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
