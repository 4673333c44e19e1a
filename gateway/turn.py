"""One turn: the unit of work a dispatch worker runs for an inbox row.

A :class:`Responder` (the default agent route, or the SOUL agents) receives a
frozen :class:`Turn` and returns a :class:`TurnResult`; the pipeline commits
the result's replies, history, audit and run records in one transaction with
the inbox row's completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .envelope import Envelope, Reply

if TYPE_CHECKING:
    from .services import Services

__all__ = ["AuditEvent", "HistoryEntry", "Responder", "Route", "Turn", "TurnResult"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One message of a conversation's history, as an agent sees it."""

    role: str  # "user" | "assistant" | "tool" | "system"
    content: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An audit row to be written with the turn."""

    kind: str
    detail: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """The agent a message goes to, and how (from ``[[routes]]`` in the config)."""

    agent: str
    require_mention: bool = True
    allowed_senders: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Turn:
    """Everything a responder needs; frozen so no responder can change what others see."""

    envelope: Envelope
    route: Route
    history: tuple[HistoryEntry, ...]
    services: Services


@dataclass(slots=True)
class TurnResult:
    """What a turn produced, committed atomically with the inbox row.

    ``runs`` are ``agent_runs`` rows (plain dicts, keys as the storage
    repository expects) so the agents package owns their shape.
    """

    replies: list[Reply] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    audit: list[AuditEvent] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)


class Responder(Protocol):
    """Answers messages that are not commands."""

    name: str

    async def respond(self, turn: Turn) -> TurnResult: ...
