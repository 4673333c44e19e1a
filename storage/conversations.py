"""Conversations (their last known reply address) and their message history."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gateway.envelope import Envelope, ReplyAddress

from .database import Database
from .storable import storable_envelope, storable_json, storable_text

__all__ = ["ConversationRepo"]


class ConversationRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    async def touch(conn: asyncpg.Connection, envelope: Envelope) -> None:
        """Remember the conversation and its newest reply address (for proactive sends)."""
        envelope = storable_envelope(envelope)
        await conn.execute(
            "INSERT INTO conversations (key, channel, account, external_id, thread, kind, title,"
            " reply_to) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (key) DO UPDATE SET reply_to = EXCLUDED.reply_to,"
            " title = coalesce(EXCLUDED.title, conversations.title), last_seen = now()",
            envelope.conversation_key, envelope.channel, envelope.account,
            envelope.conversation.id, envelope.thread, envelope.conversation.kind,
            envelope.conversation.title, envelope.reply_to.to_json(),
        )

    @staticmethod
    async def append(
        conn: asyncpg.Connection,
        conversation_key: str,
        inbox_id: str | None,
        entries: list[tuple[str, str, dict[str, Any]]],
    ) -> None:
        if not entries:
            return
        await conn.executemany(
            "INSERT INTO messages (conversation_key, role, content, inbox_id, meta)"
            " VALUES ($1, $2, $3, $4, $5)",
            [
                # a request's earlier messages or an agent's answer may hold a NUL: Postgres refuses it
                (conversation_key, role, storable_text(content), uuid.UUID(inbox_id) if inbox_id else None,
                 storable_json(meta))
                for role, content, meta in entries
            ],
        )

    async def history(self, conversation_key: str, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` messages, oldest first."""
        rows = await self.db.fetch(
            "SELECT role, content, meta, created_at FROM ("
            " SELECT * FROM messages WHERE conversation_key = $1 ORDER BY id DESC LIMIT $2"
            ") m ORDER BY id",
            conversation_key, limit,
        )
        return [dict(r) for r in rows]

    async def forget(self, conversation_key: str) -> int:
        async with self.db.pool.acquire() as conn:
            res = await conn.execute("DELETE FROM messages WHERE conversation_key = $1", conversation_key)
        return int(res.split()[-1])

    async def address(self, conversation_key: str) -> ReplyAddress | None:
        rows = await self.db.fetch("SELECT reply_to FROM conversations WHERE key = $1",
                                   storable_text(conversation_key))  # as stored (a NUL fails the query)
        return ReplyAddress.from_json(rows[0]["reply_to"]) if rows else None

    async def recent(self, limit: int = 100, channel: str | None = None) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT key, channel, account, external_id, thread, kind, title, first_seen, last_seen,"
            " (SELECT count(*) FROM messages m WHERE m.conversation_key = c.key) AS messages"
            " FROM conversations c WHERE $2::text IS NULL OR channel = $2"
            " ORDER BY last_seen DESC LIMIT $1",
            limit, channel,
        )
        return [
            {**dict(r), "first_seen": r["first_seen"].isoformat(), "last_seen": r["last_seen"].isoformat()}
            for r in rows
        ]
