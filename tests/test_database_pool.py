"""The pool hands connections back without asyncpg's per-release reset query (storage/database.py).

That query (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) cost a
round trip per repository call. Skipping it is safe only while pool connections
carry no session state; what asyncpg still does on release must keep working.
"""

from __future__ import annotations

import asyncpg

from storage import Database


async def test_release_sends_no_reset_query(soulgate_database_url: str) -> None:
    db = Database(soulgate_database_url, pool_max=1)
    await db.connect()
    try:
        async with db.pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.fetchval("SELECT 41 + 1 AS marker")
        watcher = await asyncpg.connect(soulgate_database_url)
        try:
            last = await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        finally:
            await watcher.close()
        assert last == "SELECT 41 + 1 AS marker"  # not "SELECT pg_advisory_unlock_all(); ..."
    finally:
        await db.close()


async def test_a_transaction_left_open_is_still_rolled_back(soulgate_database_url: str) -> None:
    db = Database(soulgate_database_url, pool_max=1)
    await db.connect()
    try:
        async with db.pool.acquire() as conn:
            await conn.execute("CREATE TABLE scratch (n int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO scratch VALUES (1)")  # never committed
        async with db.pool.acquire() as conn:  # the same (only) connection
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM scratch") == 0
    finally:
        await db.close()
