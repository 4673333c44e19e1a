"""Keeping the planner's statistics of the two queue tables current.

The claims of ``inbox`` and ``outbox`` find the oldest row whose conversation
(or destination) has no earlier live row: an anti-join that is cheap through
the ``*_live_conv`` / ``*_live_dest`` indexes and quadratic without them. Each
pool connection prepares the claim once and, after five runs, Postgres keeps a
generic plan built from the table's statistics at that time. On a new install
those say "empty", the generic plan scans the table for every candidate, and
when the first burst arrives (a broadcast to 1 000 chats, a flood of webhooks)
every claim takes a quarter of a second or more, until autovacuum analyzes the
table, up to a minute later (``autovacuum_naptime``): all delivery stalled for
30-67 s in ``bench/outbound.py --full``.

So the workers' instances check every two seconds whether a queue table has
changed by more than autovacuum's own threshold since its last analyze
(50 rows + 10 %), and if so run ``ANALYZE`` on it, which also makes every
session re-plan its cached statements. One instance at a time does it (an
advisory lock); on a large, settled table the check is all that ever runs.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from .database import Database

__all__ = ["QUEUE_TABLES", "analyze_stale_queue_tables", "keep_queue_stats_fresh"]

log = logging.getLogger("soulgate.storage")

QUEUE_TABLES = ("inbox", "outbox")
#: autovacuum's defaults (autovacuum_analyze_threshold, autovacuum_analyze_scale_factor)
_BASE, _SCALE = 50, 0.1
_LOCK_KEY = 0x50A1_6A7E  # advisory lock: one analyzing instance at a time

_STALE_SQL = """
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.relname = ANY($1::text[])
  AND s.n_mod_since_analyze > $2 + $3 * greatest(c.reltuples, 0)
ORDER BY s.relname
"""


async def analyze_stale_queue_tables(db: Database) -> list[str]:
    """ANALYZE each queue table changed beyond the threshold since its last analyze; returns
    the tables analyzed (none when another instance holds the lock)."""
    async with db.pool.acquire() as conn:
        stale = [r["relname"] for r in await conn.fetch(_STALE_SQL, list(QUEUE_TABLES), _BASE, _SCALE)]
        if not stale:
            return []
        async with conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY):
                return []
            for table in stale:  # names from QUEUE_TABLES only: safe to put in the statement
                await conn.execute(f"ANALYZE {table}")
    log.debug("analyzed %s (changed beyond autovacuum's threshold)", ", ".join(stale))
    return stale


async def keep_queue_stats_fresh(db: Database, *, every: float = 2.0) -> None:
    """Run ``analyze_stale_queue_tables`` every ``every`` seconds until cancelled."""
    while True:
        await asyncio.sleep(every)
        with suppress(Exception):  # database trouble: the workers report it; try again later
            await analyze_stale_queue_tables(db)
