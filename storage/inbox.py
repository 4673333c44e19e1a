"""The inbox: admitted envelopes waiting for a turn.

``admit`` is the only write on the acknowledgement path: two inserts and a
NOTIFY in one short transaction. ``claim`` hands the oldest claimable row to a
worker, keeping FIFO order inside a conversation (a row is claimable only when
no earlier row of its conversation is still live) and parallelism across
conversations (``FOR UPDATE SKIP LOCKED``). A claim carries a lease and a
token; the turn commits only if the token still owns the row, so a worker whose
lease expired cannot write a second reply.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.envelope import Envelope

from .database import Database
from .storable import storable_envelope

__all__ = ["INBOX_CHANNEL", "ClaimedTurn", "InboxRepo", "LostClaim"]

INBOX_CHANNEL = "soulgate_inbox"


class LostClaim(Exception):
    """The row's lease expired and another worker owns it now; this turn must not commit."""


class _Duplicate(Exception):
    def __init__(self, inbox_id: str) -> None:
        self.inbox_id = inbox_id


@dataclass(frozen=True, slots=True)
class ClaimedTurn:
    inbox_id: str
    token: str
    attempts: int
    envelope: Envelope


class InboxRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def admit(self, envelope: Envelope) -> tuple[str, bool]:
        """Store the envelope unless one of its natural keys is known; returns (inbox id, created)."""
        envelope = storable_envelope(envelope)  # a NUL in a message must not make it unstorable
        keys = list(dict.fromkeys([envelope.external_id, *envelope.alt_ids]))
        try:
            async with self.db.transaction() as conn:
                got = await conn.fetch(
                    "INSERT INTO inbox_keys (channel, account, key, inbox_id)"
                    " SELECT $1, $2, k, $4 FROM unnest($3::text[]) AS k"
                    " ON CONFLICT DO NOTHING RETURNING key",
                    envelope.channel, envelope.account, keys, uuid.UUID(envelope.id),
                )
                if len(got) < len(keys):
                    owner = await conn.fetchval(
                        "SELECT inbox_id FROM inbox_keys WHERE channel = $1 AND account = $2"
                        " AND key = ANY($3::text[]) AND inbox_id <> $4 LIMIT 1",
                        envelope.channel, envelope.account, keys, uuid.UUID(envelope.id),
                    )
                    raise _Duplicate(str(owner))
                await conn.execute(
                    "INSERT INTO inbox (id, channel, account, external_id, conversation_key,"
                    " envelope, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    uuid.UUID(envelope.id), envelope.channel, envelope.account,
                    envelope.external_id, envelope.conversation_key, envelope.to_json(),
                    envelope.received_at,
                )
                await conn.execute("SELECT pg_notify($1, '')", INBOX_CHANNEL)
        except _Duplicate as dup:
            return dup.inbox_id, False
        return envelope.id, True

    async def claim(self, worker: str, lease_seconds: float) -> ClaimedTurn | None:
        token = uuid.uuid4()
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(
                """
                WITH c AS (
                    SELECT i.id FROM inbox i
                    WHERE i.status IN ('pending', 'claimed')
                      AND (i.status = 'pending' OR i.lease_until < clock_timestamp())
                      AND NOT EXISTS (
                          SELECT 1 FROM inbox j
                          WHERE j.conversation_key = i.conversation_key
                            AND j.status IN ('pending', 'claimed') AND j.seq < i.seq)
                    ORDER BY i.seq
                    LIMIT 1
                    FOR UPDATE OF i SKIP LOCKED
                )
                UPDATE inbox SET status = 'claimed', attempts = inbox.attempts + 1,
                       claim_token = $1, claimed_by = $2,
                       lease_until = clock_timestamp() + make_interval(secs => $3)
                FROM c WHERE inbox.id = c.id
                RETURNING inbox.id, inbox.attempts, inbox.envelope
                """,
                token, worker, lease_seconds,
            )
        if row is None:
            return None
        return ClaimedTurn(
            inbox_id=str(row["id"]),
            token=str(token),
            attempts=row["attempts"],
            envelope=Envelope.from_json(row["envelope"]),
        )

    async def renew(self, claim: ClaimedTurn, lease_seconds: float) -> bool:
        async with self.db.pool.acquire() as conn:
            res = await conn.execute(
                "UPDATE inbox SET lease_until = clock_timestamp() + make_interval(secs => $3)"
                " WHERE id = $1 AND claim_token = $2 AND status = 'claimed'",
                uuid.UUID(claim.inbox_id), uuid.UUID(claim.token), lease_seconds,
            )
        return bool(res.endswith(" 1"))

    async def release(self, claim: ClaimedTurn, error: str) -> None:
        """Give the row back (infrastructure trouble); it is retried later."""
        async with self.db.pool.acquire() as conn:
            await conn.execute(
                "UPDATE inbox SET status = 'pending', lease_until = NULL, claim_token = NULL,"
                " error = $3 WHERE id = $1 AND claim_token = $2 AND status = 'claimed'",
                uuid.UUID(claim.inbox_id), uuid.UUID(claim.token), error[:2000],
            )

    @staticmethod
    async def complete(
        conn: asyncpg.Connection, claim: ClaimedTurn, *, status: str = "done", error: str | None = None
    ) -> None:
        """Inside the turn's transaction: mark the row finished, or raise :class:`LostClaim`."""
        res = await conn.execute(
            "UPDATE inbox SET status = $3, done_at = now(), lease_until = NULL, error = $4"
            " WHERE id = $1 AND claim_token = $2 AND status = 'claimed'",
            uuid.UUID(claim.inbox_id), uuid.UUID(claim.token), status, error,
        )
        if not res.endswith(" 1"):
            raise LostClaim(claim.inbox_id)

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetch(
            "SELECT status, count(*) AS n FROM inbox WHERE status IN ('pending', 'claimed')"
            " GROUP BY status"
        )
        out = {"pending": 0, "claimed": 0}
        out.update({r["status"]: r["n"] for r in rows})
        return out

    async def get(self, inbox_id: str) -> dict[str, Any] | None:
        rows = await self.db.fetch(
            "SELECT id, status, attempts, error, conversation_key FROM inbox WHERE id = $1",
            uuid.UUID(inbox_id),
        )
        return dict(rows[0]) if rows else None
