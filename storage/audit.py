"""The audit log and the agent run records."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from .database import Database
from .storable import storable_json

__all__ = ["RUN_FIELDS", "AuditRepo"]

#: the keys an ``agent_runs`` row may carry (see ``gateway.TurnResult.runs``)
RUN_FIELDS = (
    "agent", "model", "fallback_reason", "input_tokens", "output_tokens", "latency_ms",
    "cost_usd", "success", "error", "detail",
)


class AuditRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    async def write_many(
        conn: asyncpg.Connection,
        rows: list[tuple[str, str | None, dict[str, Any]]],
        *,
        inbox_id: str | None = None,
        conversation_key: str | None = None,
    ) -> None:
        if not rows:
            return
        await conn.executemany(
            "INSERT INTO audit (kind, plugin, inbox_id, conversation_key, detail)"
            " VALUES ($1, $2, $3, $4, $5)",
            [
                # details quote platform payloads, which may hold what Postgres refuses (a NUL, NaN)
                (kind, plugin, uuid.UUID(inbox_id) if inbox_id else None, conversation_key,
                 storable_json(detail))
                for kind, plugin, detail in rows
            ],
        )

    async def write(
        self,
        kind: str,
        detail: dict[str, Any],
        *,
        plugin: str | None = None,
        inbox_id: str | None = None,
        conversation_key: str | None = None,
    ) -> None:
        async with self.db.pool.acquire() as conn:
            await self.write_many(
                conn, [(kind, plugin, detail)], inbox_id=inbox_id, conversation_key=conversation_key
            )

    async def recent(
        self, *, limit: int = 100, kind: str | None = None, before: int | None = None
    ) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT id, at, kind, plugin, inbox_id, conversation_key, detail FROM audit"
            " WHERE ($2::text IS NULL OR kind = $2) AND ($3::bigint IS NULL OR id < $3)"
            " ORDER BY id DESC LIMIT $1",
            limit, kind, before,
        )
        return [
            {
                **dict(r),
                "at": r["at"].isoformat(),
                "inbox_id": str(r["inbox_id"]) if r["inbox_id"] else None,
            }
            for r in rows
        ]

    @staticmethod
    async def write_runs(
        conn: asyncpg.Connection,
        runs: list[dict[str, Any]],
        *,
        inbox_id: str | None,
        conversation_key: str | None,
    ) -> None:
        for run in runs:
            unknown = set(run) - set(RUN_FIELDS)
            if unknown:
                raise ValueError(f"agent run has unknown fields: {sorted(unknown)}")
            await conn.execute(
                "INSERT INTO agent_runs (inbox_id, conversation_key, agent, model, fallback_reason,"
                " input_tokens, output_tokens, latency_ms, cost_usd, success, error, detail)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                uuid.UUID(inbox_id) if inbox_id else None, conversation_key,
                run.get("agent", "?"), run.get("model"), run.get("fallback_reason"),
                run.get("input_tokens"), run.get("output_tokens"), run.get("latency_ms"),
                run.get("cost_usd"), bool(run.get("success", False)), run.get("error"),
                run.get("detail") or {},
            )
