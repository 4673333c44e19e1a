"""The inbox: admitted envelopes waiting for a turn.

``admit`` is the only write on the acknowledgement path: two inserts in one
statement (migrations 005 and 009; admissions that arrive together share it, see
storage/admission.py), then a coalesced NOTIFY outside it (storage/notify.py says
why). ``claim`` hands the oldest claimable row to a worker, keeping FIFO order inside a conversation (a row is claimable only when
no earlier row of its conversation is still live) and parallelism across
conversations (``FOR UPDATE SKIP LOCKED``). A claim carries a lease and a
token; the turn commits only if the token still owns the row, so a worker whose
lease expired cannot write a second reply.

A claim whose answer is lost with its connection (Postgres restarted just as the
statement committed) leaves a row claimed for nobody who knows it, and its
conversation would wait out the lease. The worker keeps the token it sent and
first asks for that row back (``reclaim``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from gateway.envelope import Envelope

from .admission import Admission, AdmissionBatcher
from .database import Database
from .storable import storable_json_text, storable_text

__all__ = ["INBOX_CHANNEL", "ClaimedTurn", "InboxRepo", "LostClaim"]

INBOX_CHANNEL = "soulgate_inbox"


class LostClaim(Exception):
    """The row's lease expired and another worker owns it now; this turn must not commit."""


@dataclass(frozen=True, slots=True)
class ClaimedTurn:
    inbox_id: str
    token: str
    attempts: int
    envelope: Envelope


def _claimed(row: Any, token: uuid.UUID) -> ClaimedTurn:
    return ClaimedTurn(inbox_id=str(row["id"]), token=str(token), attempts=row["attempts"],
                       envelope=Envelope.from_json(row["envelope"]))


class InboxRepo:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.admissions = AdmissionBatcher(db, lambda: db.notify_soon(INBOX_CHANNEL))

    async def admit(self, envelope: Envelope) -> tuple[str, bool]:
        """Store the envelope unless one of its natural keys is known; returns (inbox id, created).

        One statement, shared with the admissions that queued alongside (storage/admission.py):
        the keys and the row commit together, or, for a duplicate, nothing is written.
        Workers are woken after it.
        """
        # a NUL in a message must not make it unstorable: the JSON is cleaned, and so are the
        # columns copied out of it (keys deduplicated after cleaning, which may merge two;
        # sorted, so two admissions sharing keys lock them in the same order: no deadlock)
        keys = sorted({storable_text(k) for k in (envelope.external_id, *envelope.alt_ids)})
        admission = Admission(
            id=uuid.UUID(envelope.id), channel=storable_text(envelope.channel),
            account=storable_text(envelope.account), keys=keys, external_id=storable_text(envelope.external_id),
            conversation_key=storable_text(envelope.conversation_key),
            envelope_json=storable_json_text(envelope.to_json()), received_at=envelope.received_at,
        )
        owner = await self.admissions.admit(admission)
        if owner is None:  # a concurrent admission took its keys back under us: let the platform retry
            raise RuntimeError(f"admission of {envelope.id} found a duplicate without an owner")
        return str(owner), owner == admission.id

    async def claim(
        self, worker: str, lease_seconds: float, *, token: uuid.UUID | None = None
    ) -> ClaimedTurn | None:
        """The oldest claimable row, claimed under ``token`` (a fresh one by default): a caller
        that may lose the answer passes its own, to ``reclaim`` the row with it."""
        token = token or uuid.uuid4()
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
        return None if row is None else _claimed(row, token)

    async def reclaim(self, token: uuid.UUID, lease_seconds: float) -> ClaimedTurn | None:
        """The row a claim under ``token`` took, if it took one, with a fresh lease: for a
        claim whose answer was lost. Only live rows are looked at (a small index)."""
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(
                "UPDATE inbox SET lease_until = clock_timestamp() + make_interval(secs => $2)"
                " WHERE status = 'claimed' AND claim_token = $1"
                " RETURNING id, attempts, envelope",
                token, lease_seconds,
            )
        return None if row is None else _claimed(row, token)

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
