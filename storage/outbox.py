"""The outbox: rendered reply chunks waiting for delivery.

One row per chunk, unique per ``(inbox_id, seq)``, so a turn can never store
its reply twice. Rows of one destination are delivered in id order: a row is
claimable only when no earlier live row of its destination exists. A row left
``sending`` by a crashed worker is reclaimed after its lease with
``was_sending`` set, so the worker can apply the channel's "never twice" rule.
A claim whose answer was lost is taken back by its token (``reclaim``), as in
the inbox.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from gateway.envelope import Reply, ReplyAddress

from .database import Database
from .notify import HTTP_REPLY_CHANNEL, REQUEST_RESPONSE_CHANNELS
from .storable import storable_json

__all__ = ["OUTBOX_CHANNEL", "OutboxItem", "OutboxRepo", "PendingChunk"]

OUTBOX_CHANNEL = "soulgate_outbox"


@dataclass(frozen=True, slots=True)
class PendingChunk:
    """A chunk to store: where it goes and what it says."""

    seq: int
    address: ReplyAddress
    destination: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    token: str
    inbox_id: str | None
    seq: int
    attempts: int
    address: ReplyAddress
    reply: Reply
    expires_at: datetime
    was_sending: bool
    destination: str = ""  # the ordering unit (rows of one destination go one at a time)


def _pairs(skip: list[tuple[str, str]] | None) -> tuple[list[str], list[str]]:
    """``[(channel, account), ...]`` as the two arrays the queries unnest."""
    pairs = skip or []
    return [c for c, _ in pairs], [a for _, a in pairs]


def _item(row: Any, token: uuid.UUID, *, was_sending: bool) -> OutboxItem:
    return OutboxItem(
        id=row["id"], token=str(token), inbox_id=str(row["inbox_id"]) if row["inbox_id"] else None,
        seq=row["seq"], attempts=row["attempts"], address=ReplyAddress.from_json(row["address"]),
        reply=Reply.from_json(row["body"]), expires_at=row["expires_at"], was_sending=was_sending,
        destination=row["destination"],
    )


class OutboxRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    async def insert(
        conn: asyncpg.Connection, inbox_id: str | None, chunks: list[PendingChunk], ttl_seconds: float
    ) -> list[int]:
        ids: list[int] = []
        for c in chunks:
            new_id = await conn.fetchval(
                "INSERT INTO outbox (inbox_id, seq, channel, account, destination, address, body,"
                " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7,"
                " now() + make_interval(secs => $8))"
                " ON CONFLICT (inbox_id, seq) DO NOTHING RETURNING id",
                uuid.UUID(inbox_id) if inbox_id else None, c.seq, c.address.channel,
                # an answer may quote what Postgres refuses (a NUL from the user, NaN in meta)
                c.address.account, c.destination, storable_json(c.address.to_json()),
                storable_json(c.reply.to_json()), ttl_seconds,
            )
            if new_id is not None:
                ids.append(new_id)
        if ids:
            await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
        return ids

    async def enqueue(self, chunks: list[PendingChunk], ttl_seconds: float) -> list[int]:
        """A proactive send (no inbox row)."""
        async with self.db.transaction() as conn:
            return await self.insert(conn, None, chunks, ttl_seconds)

    async def claim(
        self, lease_seconds: float, channels: list[str] | None = None,
        skip: list[tuple[str, str]] | None = None, *, token: uuid.UUID | None = None,
    ) -> OutboxItem | None:
        """The next due row, oldest due first; ``skip``: ``(channel, account)`` pairs whose rows
        are left alone (their shared rate bucket is full for now). Claimed under ``token``
        (a fresh one by default; see ``reclaim``)."""
        token = token or uuid.uuid4()
        skip_channels, skip_accounts = _pairs(skip)
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(
                """
                WITH c AS (
                    SELECT o.id, o.status AS prev FROM outbox o
                    WHERE o.status IN ('pending', 'sending')
                      AND ((o.status = 'pending' AND o.next_attempt_at <= clock_timestamp())
                           OR (o.status = 'sending' AND o.lease_until < clock_timestamp()))
                      AND ($3::text[] IS NULL OR o.channel = ANY($3::text[]))
                      AND NOT EXISTS (SELECT 1 FROM unnest($4::text[], $5::text[]) s(ch, acc)
                                      WHERE s.ch = o.channel AND s.acc = o.account)
                      AND NOT EXISTS (
                          SELECT 1 FROM outbox p
                          WHERE p.destination = o.destination
                            AND p.status IN ('pending', 'sending') AND p.id < o.id)
                    ORDER BY o.next_attempt_at, o.id
                    LIMIT 1
                    FOR UPDATE OF o SKIP LOCKED
                )
                UPDATE outbox SET status = 'sending', attempts = outbox.attempts + 1,
                       claim_token = $1,
                       lease_until = clock_timestamp() + make_interval(secs => $2)
                FROM c WHERE outbox.id = c.id
                RETURNING outbox.id, outbox.inbox_id, outbox.seq, outbox.attempts,
                          outbox.address, outbox.body, outbox.expires_at, c.prev, outbox.destination
                """,
                token, lease_seconds, channels, skip_channels, skip_accounts,
            )
        return None if row is None else _item(row, token, was_sending=row["prev"] == "sending")

    async def reclaim(self, token: uuid.UUID, lease_seconds: float) -> OutboxItem | None:
        """The row a claim under ``token`` took, if it took one, with a fresh lease: for a claim
        whose answer was lost. Nothing was sent under that claim; but the row may have been
        'sending' before it (a crashed worker's send), which the lost claim no longer tells,
        so ``was_sending`` is assumed whenever an earlier attempt was counted."""
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(
                "UPDATE outbox SET lease_until = clock_timestamp() + make_interval(secs => $2)"
                " WHERE status = 'sending' AND claim_token = $1"
                " RETURNING id, inbox_id, seq, attempts, address, body, expires_at, destination",
                token, lease_seconds,
            )
        return None if row is None else _item(row, token, was_sending=row["attempts"] > 1)

    async def next_due_in(self, skip: list[tuple[str, str]] | None = None) -> float | None:
        """Seconds until the earliest claimable pending row is due (None: none); rows of
        the ``(channel, account)`` pairs in ``skip`` do not count (see ``claim``).

        Rows queued behind a live earlier row of their destination do not count:
        the worker that finishes the earlier row claims them next, so waking up
        for them would only spin.
        """
        async with self.db.pool.acquire() as conn:
            # (not greatest(0, …) in SQL: GREATEST ignores NULL, so "nothing pending"
            # would read as "due now" and idle workers would spin)
            # the head (lowest live id) of each destination, in one pass over outbox_live_dest:
            # a NOT EXISTS per pending row took ~70 ms with 1 000 rows queued, and every idle
            # worker asks this on every loop
            due = await conn.fetchval(
                "SELECT extract(epoch FROM min(h.next_attempt_at) - clock_timestamp())::float8"
                " FROM (SELECT DISTINCT ON (o.destination) o.status, o.next_attempt_at, o.channel,"
                " o.account FROM outbox o WHERE o.status IN ('pending', 'sending')"
                " ORDER BY o.destination, o.id) h"
                " WHERE h.status = 'pending'"
                " AND NOT EXISTS (SELECT 1 FROM unnest($1::text[], $2::text[]) s(ch, acc)"
                " WHERE s.ch = h.channel AND s.acc = h.account)",
                *_pairs(skip),
            )
        return None if due is None else max(0.0, float(due))

    async def _finish(self, item: OutboxItem, sql: str, *args: Any, final: bool = False) -> bool:
        async with self.db.pool.acquire() as conn:
            res = await conn.execute(sql, item.id, uuid.UUID(item.token), *args)
        done = bool(res.endswith(" 1"))
        if done and final and item.inbox_id and item.address.channel in REQUEST_RESPONSE_CHANNELS:
            self.db.notify_soon(HTTP_REPLY_CHANNEL)  # the handler waiting for this reply
        return done

    async def mark_sent(self, item: OutboxItem, platform_message_id: str | None) -> bool:
        return await self._finish(
            item,
            "UPDATE outbox SET status = 'sent', sent_at = now(), platform_message_id = $3,"
            " lease_until = NULL WHERE id = $1 AND claim_token = $2 AND status = 'sending'",
            platform_message_id, final=True,
        )

    async def retry_later(self, item: OutboxItem, delay: float, error: str, *, count: bool = True) -> bool:
        """Back to pending, due in ``delay`` seconds; ``count=False`` refunds the attempt."""
        return await self._finish(
            item,
            "UPDATE outbox SET status = 'pending', lease_until = NULL, last_error = $4,"
            " attempts = attempts - CASE WHEN $5 THEN 0 ELSE 1 END,"
            " next_attempt_at = clock_timestamp() + make_interval(secs => $3)"
            " WHERE id = $1 AND claim_token = $2 AND status = 'sending'",
            delay, error[:2000], count,
        )

    async def bury(self, item: OutboxItem, error: str, *, status: str = "dead") -> bool:
        """Dead-letter (or park as ``unknown``); visible in ``/api/outbox/dead``."""
        return await self._finish(
            item,
            "UPDATE outbox SET status = $4, lease_until = NULL, last_error = $3"
            " WHERE id = $1 AND claim_token = $2 AND status = 'sending'",
            error[:2000], status, final=True,
        )

    async def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT id, inbox_id, seq, channel, account, destination, status, attempts,"
            " last_error, created_at, body FROM outbox WHERE status IN ('dead', 'unknown')"
            " ORDER BY id DESC LIMIT $1",
            limit,
        )
        return [
            {
                **{k: r[k] for k in ("id", "seq", "channel", "account", "destination", "status",
                                     "attempts", "last_error")},
                "inbox_id": str(r["inbox_id"]) if r["inbox_id"] else None,
                "created_at": r["created_at"].isoformat(),
                "text": (r["body"] or {}).get("text", "")[:500],
            }
            for r in rows
        ]

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetch(
            "SELECT status, count(*) AS n FROM outbox"
            " WHERE status IN ('pending', 'sending', 'dead', 'unknown') GROUP BY status"
        )
        out = {"pending": 0, "sending": 0, "dead": 0, "unknown": 0}
        out.update({r["status"]: r["n"] for r in rows})
        return out

    async def for_inbox(self, inbox_id: str) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT id, seq, status, attempts, platform_message_id, body FROM outbox"
            " WHERE inbox_id = $1 ORDER BY seq",
            uuid.UUID(inbox_id),
        )
        return [dict(r) for r in rows]
