"""Small durable key/value state, and cluster-wide leadership by advisory lock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg

from .database import Database
from .storable import storable_text

__all__ = ["StateRepo", "leadership"]

log = logging.getLogger("soulgate.storage")


class StateRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Keys may hold platform ids (a Slack thread's channel and ts): storable_text keeps a NUL
    # or a lone surrogate in them from failing the query.

    async def get(self, key: str) -> Any:
        async with self.db.pool.acquire() as conn:
            return await conn.fetchval("SELECT value FROM kv_state WHERE key = $1", storable_text(key))

    async def set(self, key: str, value: Any) -> None:
        key = storable_text(key)
        async with self.db.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO kv_state (key, value) VALUES ($1, $2) ON CONFLICT (key)"
                " DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                key, value,
            )

    async def set_if_absent(self, key: str, value: Any) -> Any:
        """Store ``value`` unless the key exists; returns the stored value either way."""
        key = storable_text(key)
        async with self.db.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO kv_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                key, value,
            )
            return await conn.fetchval("SELECT value FROM kv_state WHERE key = $1", key)


@asynccontextmanager
async def leadership(
    db: Database, name: str, *, retry_seconds: float = 2.0, check_seconds: float = 5.0
) -> AsyncIterator[None]:
    """Wait until this process holds the advisory lock for ``name``, then run the block.

    The lock lives on a dedicated connection (the pool would release it). If that
    connection dies, the lock is gone in Postgres too, so the block is cancelled:
    another instance may already be leading.
    """
    conn: asyncpg.Connection | None = None
    while True:
        try:
            conn = await db.connect_dedicated()
            if await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", name):
                break
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("leadership %s: database not reachable (%s); retrying", name, exc)
        if conn is not None:
            with suppress(Exception):
                await conn.close()
            conn = None
        await asyncio.sleep(retry_seconds)
    log.info("this instance now leads %s", name)
    holder = asyncio.current_task()

    async def watch() -> None:
        assert conn is not None
        while True:
            await asyncio.sleep(check_seconds)
            try:
                await conn.fetchval("SELECT 1", timeout=check_seconds)
            except Exception:
                log.warning("lost the database connection holding leadership of %s", name)
                if holder is not None:
                    holder.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with suppress(BaseException):
            await watcher
        with suppress(Exception):
            await conn.close()  # closing the session releases the lock
