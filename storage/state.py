"""Small durable key/value state, and cluster-wide leadership by advisory lock.

A value may be stored with an expiry (``expires_in`` seconds): state that only matters
for a while, like a kept mail attachment or the root of a multi-chunk post, would
otherwise pile up one row per message forever. An expired row reads as absent at once,
and :func:`prune_expired_state` (run by the worker instances) deletes it later.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg

from .database import Database
from .storable import storable_text

__all__ = ["StateRepo", "keep_state_pruned", "leadership", "prune_expired_state"]

log = logging.getLogger("soulgate.storage")


class StateRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Keys may hold platform ids (a Slack thread's channel and ts): storable_text keeps a NUL
    # or a lone surrogate in them from failing the query.

    async def get(self, key: str) -> Any:
        async with self.db.pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT value FROM kv_state WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())",
                storable_text(key))

    async def set(self, key: str, value: Any, *, expires_in: float | None = None) -> None:
        """Store ``value`` under ``key``; with ``expires_in`` (seconds, > 0) it reads as absent
        after that long, and is deleted later. Without it, the value is kept until overwritten."""
        if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int | float)
                                       or not math.isfinite(expires_in) or expires_in <= 0):
            raise ValueError(f"expires_in must be a positive number of seconds or None, not {expires_in!r}")
        key = storable_text(key)
        async with self.db.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO kv_state (key, value, expires_at) VALUES ($1, $2,"
                " now() + make_interval(secs => $3::float8)) ON CONFLICT (key)"
                " DO UPDATE SET value = EXCLUDED.value, updated_at = now(), expires_at = EXCLUDED.expires_at",
                key, value, None if expires_in is None else float(expires_in),
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


async def prune_expired_state(db: Database, *, batch: int = 200) -> int:
    """Delete expired state rows, ``batch`` at a time (short transactions: a kept mail
    attachment's row may hold megabytes); returns how many."""
    total = 0
    while True:
        async with db.pool.acquire() as conn:
            status = await conn.execute(
                "DELETE FROM kv_state WHERE key IN (SELECT key FROM kv_state WHERE expires_at <= now()"
                " LIMIT $1 FOR UPDATE SKIP LOCKED)", batch)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            return total


async def keep_state_pruned(db: Database, *, every: float = 600.0) -> None:
    """Run :func:`prune_expired_state` every ``every`` seconds, for as long as the task lives.
    Several instances may run it at once: each row is deleted by one of them."""
    while True:
        await asyncio.sleep(every)
        try:
            deleted = await prune_expired_state(db)
        except Exception as exc:  # the database is away: next time
            log.debug("pruning expired adapter state failed: %s", exc)
            continue
        if deleted:
            log.info("deleted %d expired adapter state rows", deleted)


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
