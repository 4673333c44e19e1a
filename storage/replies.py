"""Waiting for a turn's reply in the process that admitted it (request/response channels).

The http channel answers an HTTP request with the reply of the turn it
admitted, but the turn may run, and its chunks be delivered, in another gateway
instance. So the waiting handler cannot rely on an in-process callback: it asks
here how its inbox rows are doing, and sleeps on ``LISTEN soulgate_http_reply``
in between (the turn's commit and each of its chunks' final status wake it, after
their commits: storage/turns.py and storage/outbox.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.envelope import Reply

from .conversations import ConversationRepo
from .database import Database
from .notify import HTTP_REPLY_CHANNEL, listen_forever

__all__ = ["HTTP_REPLY_CHANNEL", "RepliesRepo", "TurnProgress"]

_FINAL_TURN = ("done", "failed")
_LIVE_CHUNK = ("pending", "sending")


@dataclass(frozen=True, slots=True)
class TurnProgress:
    """Where one admitted message stands: its inbox status and its reply chunks (by seq)."""

    inbox_id: str
    channel: str
    account: str
    status: str
    conversation_key: str
    #: the agent the envelope asked for (``Envelope.agent``), if any
    agent: str | None
    chunks: tuple[Reply, ...]
    chunk_status: tuple[str, ...]
    error: str | None = None

    @property
    def finished(self) -> bool:
        """The turn is committed and none of its chunks is still waiting to be delivered."""
        return self.status in _FINAL_TURN and not any(s in _LIVE_CHUNK for s in self.chunk_status)


class RepliesRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def progress(self, inbox_ids: Sequence[str]) -> dict[str, TurnProgress]:
        """The progress of several inbox rows in one query (unknown ids are left out)."""
        if not inbox_ids:
            return {}
        rows = await self.db.fetch(
            "SELECT i.id, i.channel, i.account, i.status, i.error, i.conversation_key,"
            " i.envelope->>'agent' AS agent, o.chunks FROM inbox i"
            " LEFT JOIN LATERAL ("
            "  SELECT jsonb_agg(jsonb_build_object('status', status, 'body', body) ORDER BY seq) AS chunks"
            "  FROM outbox WHERE outbox.inbox_id = i.id"
            " ) o ON true"
            " WHERE i.id = ANY($1::uuid[])",
            [uuid.UUID(i) for i in inbox_ids],
        )
        out: dict[str, TurnProgress] = {}
        for r in rows:
            chunks: list[dict[str, Any]] = r["chunks"] or []
            out[str(r["id"])] = TurnProgress(
                inbox_id=str(r["id"]),
                channel=r["channel"],
                account=r["account"],
                status=r["status"],
                conversation_key=r["conversation_key"],
                agent=r["agent"],
                chunks=tuple(Reply.from_json(c["body"]) for c in chunks),
                chunk_status=tuple(str(c["status"]) for c in chunks),
                error=r["error"],
            )
        return out

    async def usage(self, turns: Sequence[tuple[str, str]]) -> dict[str, tuple[int, int]]:
        """``(input, output)`` tokens of every LLM call of each ``(inbox_id, conversation_key)``.

        Filtered by conversation key too, so the ``agent_runs`` index on it is used.
        Turns without runs (commands, no model) are left out.
        """
        if not turns:
            return {}
        rows = await self.db.fetch(
            "SELECT r.inbox_id, coalesce(sum(r.input_tokens), 0) AS input_tokens,"
            " coalesce(sum(r.output_tokens), 0) AS output_tokens"
            " FROM unnest($1::uuid[], $2::text[]) AS t(id, key)"
            " JOIN agent_runs r ON r.conversation_key = t.key AND r.inbox_id = t.id"
            " GROUP BY r.inbox_id",
            [uuid.UUID(i) for i, _k in turns], [k for _i, k in turns],
        )
        return {str(r["inbox_id"]): (int(r["input_tokens"]), int(r["output_tokens"])) for r in rows}

    async def seed_history(
        self, conversation_key: str, inbox_id: str, entries: Sequence[tuple[str, str, dict[str, Any]]]
    ) -> int:
        """Start a conversation's history with ``entries``, unless it has history already.

        A conversation with stored messages, or with a turn admitted but not yet
        committed, is left alone (returns 0): earlier messages sent by a client
        start a conversation, they never rewrite one. The advisory lock keeps two
        concurrent first requests from both seeding.
        """
        if not entries:
            return 0
        async with self.db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", conversation_key)
            busy = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE conversation_key = $1)"
                " OR EXISTS (SELECT 1 FROM inbox WHERE conversation_key = $1"
                " AND status IN ('pending', 'claimed'))",
                conversation_key,
            )
            if busy:
                return 0
            await ConversationRepo.append(conn, conversation_key, inbox_id, list(entries))
        return len(entries)

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` on every reply notification (and after each reconnect); runs until cancelled."""
        await listen_forever(self.db, {HTTP_REPLY_CHANNEL: wake})
