"""Committing a turn: everything a turn produced, in one transaction with the inbox row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.envelope import Envelope

from .audit import AuditRepo
from .conversations import ConversationRepo
from .database import Database
from .inbox import ClaimedTurn, InboxRepo
from .outbox import OutboxRepo, PendingChunk

__all__ = ["TurnRecord", "commit_turn"]


@dataclass(slots=True)
class TurnRecord:
    chunks: list[PendingChunk] = field(default_factory=list)
    #: (role, content, meta) rows appended to the conversation history
    history: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: (kind, plugin, detail) audit rows
    audit: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    status: str = "done"
    error: str | None = None
    #: the envelope as inbound filters left it (history and the conversation go under its key)
    envelope: Envelope | None = None


async def commit_turn(db: Database, claim: ClaimedTurn, record: TurnRecord, *, ttl_seconds: float) -> None:
    """Store the turn's outcome; raises ``LostClaim`` (and writes nothing) if the lease was lost."""
    env = record.envelope or claim.envelope
    key = env.conversation_key
    async with db.transaction() as conn:
        await InboxRepo.complete(conn, claim, status=record.status, error=record.error)
        await OutboxRepo.insert(conn, claim.inbox_id, record.chunks, ttl_seconds)
        await ConversationRepo.touch(conn, env)
        await ConversationRepo.append(conn, key, claim.inbox_id, record.history)
        await AuditRepo.write_many(conn, record.audit, inbox_id=claim.inbox_id, conversation_key=key)
        await AuditRepo.write_runs(conn, record.runs, inbox_id=claim.inbox_id, conversation_key=key)
