"""Reading the ``agent_runs`` records: recent rows and totals (admin ``/api/runs``, ``/usage``).

Rows are written with the turn (see :mod:`storage.turns`); :meth:`RunsRepo.record`
is for LLM calls made outside a turn (e.g. an embedding for a ``/remember``
command).
"""

from __future__ import annotations

from typing import Any

from .audit import AuditRepo
from .database import Database

__all__ = ["RunsRepo"]

_TOTALS = (
    "count(*) AS calls,"
    " count(*) FILTER (WHERE NOT success) AS failures,"
    " coalesce(sum(input_tokens), 0) AS input_tokens,"
    " coalesce(sum(output_tokens), 0) AS output_tokens,"
    " sum(cost_usd) AS cost_usd,"
    " count(*) FILTER (WHERE success AND cost_usd IS NULL) AS calls_without_cost,"
    " avg(latency_ms) AS avg_latency_ms"
)
_FILTER = (
    " WHERE ($1::text IS NULL OR agent = $1) AND ($2::text IS NULL OR model = $2)"
    " AND ($3::text IS NULL OR conversation_key = $3)"
)


def _totals(r: Any) -> dict[str, Any]:
    out = dict(r)
    out["calls"], out["failures"] = int(out["calls"]), int(out["failures"])
    out["input_tokens"], out["output_tokens"] = int(out["input_tokens"]), int(out["output_tokens"])
    out["calls_without_cost"] = int(out["calls_without_cost"])
    if out["avg_latency_ms"] is not None:
        out["avg_latency_ms"] = round(float(out["avg_latency_ms"]), 1)
    return out


class RunsRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self, runs: list[dict[str, Any]], *, inbox_id: str | None = None, conversation_key: str | None = None
    ) -> None:
        if runs:
            async with self.db.transaction() as conn:
                await AuditRepo.write_runs(conn, runs, inbox_id=inbox_id, conversation_key=conversation_key)

    async def recent(
        self,
        *,
        limit: int = 100,
        agent: str | None = None,
        model: str | None = None,
        conversation_key: str | None = None,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT id, at, inbox_id, conversation_key, agent, model, fallback_reason, input_tokens,"
            " output_tokens, latency_ms, cost_usd, success, error, detail FROM agent_runs"
            + _FILTER + " AND ($5::bigint IS NULL OR id < $5) ORDER BY id DESC LIMIT $4",
            agent, model, conversation_key, limit, before,
        )
        return [
            {**dict(r), "at": r["at"].isoformat(), "inbox_id": str(r["inbox_id"]) if r["inbox_id"] else None}
            for r in rows
        ]

    async def totals(
        self, *, agent: str | None = None, model: str | None = None, conversation_key: str | None = None
    ) -> dict[str, Any]:
        """Totals overall, per agent and per model (same filters as :meth:`recent`)."""
        args = (agent, model, conversation_key)
        overall = await self.db.fetch(f"SELECT {_TOTALS} FROM agent_runs" + _FILTER, *args)
        by_agent = await self.db.fetch(
            f"SELECT agent, {_TOTALS} FROM agent_runs" + _FILTER + " GROUP BY agent ORDER BY agent", *args
        )
        by_model = await self.db.fetch(
            f"SELECT model, {_TOTALS} FROM agent_runs" + _FILTER + " GROUP BY model ORDER BY model NULLS LAST",
            *args,
        )
        return {
            "all": _totals(overall[0]),
            "by_agent": [_totals(r) for r in by_agent],
            "by_model": [_totals(r) for r in by_model],
        }
