"""Committing a turn: everything a turn produced, with the inbox row, in one statement.

The outcome of a turn is the inbox row marked finished, its reply chunks in the
outbox, the conversation's newest reply address, history, audit and agent-run
rows. They are written by a single statement (data-modifying CTEs, so one
implicit transaction and one round trip instead of ~9): every insert reads from
the inbox update, so when the claim was lost (the update matched no row) nothing
at all is written. The turn's values travel as one JSON document, serialised
and cleaned for Postgres once (:func:`storable_json_text`).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.envelope import Envelope

from .audit import RUN_FIELDS
from .database import Database
from .inbox import ClaimedTurn, InboxRepo, LostClaim
from .notify import HTTP_REPLY_CHANNEL, REQUEST_RESPONSE_CHANNELS
from .outbox import OUTBOX_CHANNEL, PendingChunk
from .storable import storable_json_text

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


# Each insert joins ``done``: no row there (the lease was lost), no write anywhere. ORDER BY
# the position keeps ids in the turn's order (history is read back by id). Delivery
# workers are woken after the commit, when a chunk was stored (storage/notify.py).
_COMMIT_SQL = """
WITH d AS MATERIALIZED (SELECT $5::text::jsonb AS doc),
done AS (
    UPDATE inbox SET status = $3, done_at = now(), lease_until = NULL, error = $4
    WHERE id = $1 AND claim_token = $2 AND status = 'claimed'
    RETURNING id
),
chunks AS (
    INSERT INTO outbox (inbox_id, seq, channel, account, destination, address, body, expires_at)
    SELECT $1, (c->>'seq')::int, c->>'channel', c->>'account', c->>'destination', c->'address',
           c->'body', now() + make_interval(secs => $6)
    FROM done, d, jsonb_array_elements(d.doc->'chunks') WITH ORDINALITY AS e(c, n)
    ORDER BY e.n
    ON CONFLICT (inbox_id, seq) DO NOTHING
    RETURNING id
),
conversation AS (
    INSERT INTO conversations (key, channel, account, external_id, thread, kind, title, reply_to)
    SELECT v->>'key', v->>'channel', v->>'account', v->>'external_id', v->>'thread', v->>'kind',
           v->>'title', v->'reply_to'
    FROM done, d, LATERAL (SELECT d.doc->'conversation' AS v) AS x
    ON CONFLICT (key) DO UPDATE SET reply_to = EXCLUDED.reply_to,
        title = coalesce(EXCLUDED.title, conversations.title), last_seen = now()
    -- a new row version only when something changed, or last_seen is a minute old
    WHERE conversations.reply_to IS DISTINCT FROM EXCLUDED.reply_to
       OR (EXCLUDED.title IS NOT NULL AND conversations.title IS DISTINCT FROM EXCLUDED.title)
       OR conversations.last_seen < now() - interval '1 minute'
),
history AS (
    INSERT INTO messages (conversation_key, role, content, inbox_id, meta)
    SELECT d.doc->>'key', h->>'role', h->>'content', $1, h->'meta'
    FROM done, d, jsonb_array_elements(d.doc->'history') WITH ORDINALITY AS e(h, n)
    ORDER BY e.n
),
audit_rows AS (
    INSERT INTO audit (kind, plugin, inbox_id, conversation_key, detail)
    SELECT a->>'kind', a->>'plugin', $1, d.doc->>'key', a->'detail'
    FROM done, d, jsonb_array_elements(d.doc->'audit') WITH ORDINALITY AS e(a, n)
    ORDER BY e.n
),
runs AS (
    INSERT INTO agent_runs (inbox_id, conversation_key, agent, model, fallback_reason, input_tokens,
                            output_tokens, latency_ms, cost_usd, success, error, detail)
    SELECT $1, d.doc->>'key', r->>'agent', r->>'model', r->>'fallback_reason',
           (r->>'input_tokens')::int, (r->>'output_tokens')::int, (r->>'latency_ms')::float8,
           (r->>'cost_usd')::float8, (r->>'success')::boolean, r->>'error', r->'detail'
    FROM done, d, jsonb_array_elements(d.doc->'runs') WITH ORDINALITY AS e(r, n)
    ORDER BY e.n
)
"""
_COMMIT_ONLY_SQL = _COMMIT_SQL + """
SELECT (SELECT count(*) FROM done) AS done, (SELECT count(*) FROM chunks) AS chunks
"""
# The same, and the worker's next row claimed in the same statement (one round trip and
# one WAL flush per message instead of two). The claim is InboxRepo.claim's, except that
# the row being finished counts as done: it is, when ``done`` has a row, and only then
# does anything get claimed.
_COMMIT_AND_CLAIM_SQL = _COMMIT_SQL + """,
next_row AS (
    SELECT i.id FROM inbox i
    WHERE EXISTS (SELECT 1 FROM done)
      AND i.status IN ('pending', 'claimed') AND i.id <> $1
      AND (i.status = 'pending' OR i.lease_until < clock_timestamp())
      AND NOT EXISTS (
          SELECT 1 FROM inbox j
          WHERE j.conversation_key = i.conversation_key AND j.id <> $1
            AND j.status IN ('pending', 'claimed') AND j.seq < i.seq)
    ORDER BY i.seq
    LIMIT 1
    FOR UPDATE OF i SKIP LOCKED
),
claimed AS (
    UPDATE inbox SET status = 'claimed', attempts = inbox.attempts + 1,
           claim_token = $7, claimed_by = $8,
           lease_until = clock_timestamp() + make_interval(secs => $9)
    FROM next_row WHERE inbox.id = next_row.id
    RETURNING inbox.id, inbox.attempts, inbox.envelope
)
SELECT (SELECT count(*) FROM done) AS done, (SELECT count(*) FROM chunks) AS chunks,
       c.id AS next_id, c.attempts AS next_attempts, c.envelope AS next_envelope
FROM (SELECT 1) AS one LEFT JOIN claimed AS c ON true
"""


async def commit_turn(
    db: Database,
    claim: ClaimedTurn,
    record: TurnRecord,
    *,
    ttl_seconds: float,
    claim_next: tuple[str, float] | None = None,
    next_token: uuid.UUID | None = None,
) -> ClaimedTurn | None:
    """Store the turn's outcome; raises ``LostClaim`` (and writes nothing) if the lease was lost.

    With ``claim_next=(worker, lease_seconds)`` the same statement also claims the next
    claimable row for ``worker`` and returns it (None when there is none). It sees the
    inbox as it was when the statement began: a row admitted meanwhile is left to the
    NOTIFY that announced it.

    Called again after its answer was lost (the connection died as it committed), it finds
    the turn stored under its own token and returns normally; the row that attempt claimed
    is handed back when the caller passes the same ``next_token`` both times.
    """
    doc = _document(record.envelope or claim.envelope, record)  # bad run fields raise before any write
    args: list[Any] = [uuid.UUID(claim.inbox_id), uuid.UUID(claim.token), record.status,
                       record.error, storable_json_text(doc), float(ttl_seconds)]
    token = next_token or uuid.uuid4()
    if claim_next is not None:
        args += [token, claim_next[0], float(claim_next[1])]
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(_COMMIT_ONLY_SQL if claim_next is None else _COMMIT_AND_CLAIM_SQL, *args)
        if row is None or row["done"] != 1:
            # finished under our own token: an earlier call of ours committed; its answer was lost
            ours = await conn.fetchval("SELECT status <> 'claimed' AND claim_token = $2 FROM inbox"
                                       " WHERE id = $1", args[0], args[1])
            if not ours:
                raise LostClaim(claim.inbox_id)
            row = None
    if row is None or row["chunks"]:  # (after a lost answer: whether it stored chunks is not known)
        db.notify_soon(OUTBOX_CHANNEL)
    if claim.envelope.channel in REQUEST_RESPONSE_CHANNELS:
        db.notify_soon(HTTP_REPLY_CHANNEL)  # the handler waiting for this turn's answer
    if claim_next is None:
        return None
    if row is None:
        return await InboxRepo(db).reclaim(token, float(claim_next[1]))
    if row["next_id"] is None:
        return None
    return ClaimedTurn(inbox_id=str(row["next_id"]), token=str(token), attempts=row["next_attempts"],
                       envelope=Envelope.from_json(row["next_envelope"]))


def _document(env: Envelope, record: TurnRecord) -> dict[str, Any]:
    key = env.conversation_key
    return {
        "key": key,
        "conversation": {
            "key": key, "channel": env.channel, "account": env.account,
            "external_id": env.conversation.id, "thread": env.thread, "kind": env.conversation.kind,
            "title": env.conversation.title, "reply_to": env.reply_to.to_json(),
        },
        "chunks": [
            {"seq": c.seq, "channel": c.address.channel, "account": c.address.account,
             "destination": c.destination, "address": c.address.to_json(), "body": c.reply.to_json()}
            for c in record.chunks
        ],
        "history": [{"role": role, "content": content, "meta": meta or {}}
                    for role, content, meta in record.history],
        "audit": [{"kind": kind, "plugin": plugin, "detail": detail or {}}
                  for kind, plugin, detail in record.audit],
        "runs": [_run(run) for run in record.runs],
    }


def _run(run: dict[str, Any]) -> dict[str, Any]:
    unknown = set(run) - set(RUN_FIELDS)
    if unknown:
        raise ValueError(f"agent run has unknown fields: {sorted(unknown)}")
    return {
        "agent": str(run.get("agent") or "?"), "model": _text(run.get("model")),
        "fallback_reason": _text(run.get("fallback_reason")),
        "input_tokens": _int(run.get("input_tokens")), "output_tokens": _int(run.get("output_tokens")),
        "latency_ms": _float(run.get("latency_ms")), "cost_usd": _float(run.get("cost_usd")),
        "success": bool(run.get("success", False)), "error": _text(run.get("error")),
        "detail": run.get("detail") or {},
    }


# A responder's numbers arrive as whatever its provider reported; a token count of 12.0 or a
# cost of NaN must not make the turn uncommittable (it would be retried forever).
def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value) if abs(value) < 2**31 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
