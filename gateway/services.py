"""What the gateway offers plugins, skills and responders at run time.

One object, handed to every hook that needs it, so plugins never import our
internals. Everything here is safe to call from a command or tool handler.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .envelope import Attachment, Envelope, Reply, ReplyAddress
from .router import resolve_route
from .skills import Command, Tool
from .turn import HistoryEntry, Route

if TYPE_CHECKING:
    from .runtime import Gateway

__all__ = ["Services"]


class Services:
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self.started_monotonic = time.monotonic()
        self._provided: dict[str, Any] = {}

    @property
    def instance_id(self) -> str:
        return self._gw.instance_id

    @property
    def config(self) -> Any:
        """The validated :class:`gateway.config.Config` (secrets stay ``SecretStr``)."""
        return self._gw.config

    @property
    def store(self) -> Any:
        """The storage repositories (for the agents package and bundled plugins)."""
        return self._gw.store

    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    def commands(self) -> list[tuple[str, Command]]:
        """``(plugin, command)`` for every loaded command, sorted by name."""
        return sorted(self._gw.skills.commands.values(), key=lambda pc: pc[1].name)

    def tools(self) -> dict[str, tuple[str, Tool]]:
        return dict(self._gw.skills.tools)

    def plugin_config(self, name: str) -> Any:
        return self._gw.plugin_configs.get(name)

    def provide(self, name: str, obj: Any) -> None:
        """Share an object with other plugins under ``name`` (e.g. the agents plugin's
        long-term ``"memory"``, used by the bundled memory skill)."""
        self._provided[name] = obj

    def provided(self, name: str) -> Any:
        """What a plugin shared under ``name`` with :meth:`provide`, or None."""
        return self._provided.get(name)

    async def status(self) -> dict[str, Any]:
        return await self._gw.status()

    def route(self, envelope: Envelope) -> Route:
        """The ``[[routes]]`` entry that applies to ``envelope`` (agent and options).

        For plugins that act on route options outside the responder, e.g. a
        ``soulgate_reply`` hook reading a channel-specific option.
        """
        return resolve_route(envelope, self._gw.config.routes, self._gw.config.agents.default)

    async def history(self, conversation_key: str, limit: int = 50) -> list[HistoryEntry]:
        rows = await self._gw.store.conversations.history(conversation_key, limit)
        return [HistoryEntry(role=r["role"], content=r["content"], meta=r["meta"] or {}) for r in rows]

    async def forget_history(self, conversation_key: str) -> int:
        return int(await self._gw.store.conversations.forget(conversation_key))

    async def send(self, target: ReplyAddress | str, reply: Reply | str) -> list[int]:
        """Proactive send to a stored conversation key or an explicit address; returns outbox ids."""
        return await self._gw.send_proactive(target, reply)

    async def fetch_attachment(
        self, envelope: Envelope, attachment: Attachment, *, max_bytes: int | None = None
    ) -> bytes:
        """Download an attachment of ``envelope`` through the adapter that received it.

        Files are not fetched at admit time (most are never needed); a skill or
        agent that wants the bytes asks here. Raises ``ValueError`` over the size cap.
        """
        adapter = self._gw.adapters.get((envelope.channel, envelope.account))
        if adapter is None:
            raise LookupError(f"no adapter for {envelope.channel}/{envelope.account} in this instance")
        return await adapter.fetch_attachment(attachment, max_bytes=max_bytes)

    async def audit(
        self, kind: str, detail: dict[str, Any], *, plugin: str | None = None,
        envelope: Envelope | None = None,
    ) -> None:
        await self._gw.store.audit.write(
            kind, detail, plugin=plugin,
            inbox_id=envelope.id if envelope else None,
            conversation_key=envelope.conversation_key if envelope else None,
        )
