"""The queue tables' planner statistics follow a burst (storage/planner_stats.py).

A claim statement's cached generic plan is built from the statistics of the
moment. Built on an empty table, it scans the table once per candidate row; a
burst then makes every claim slow until the table is analyzed. These tests look
at the plan's shape, not at timings: the generic plan of the outbox claim, as
Postgres would cache it, before and after the keeper runs.
"""

from __future__ import annotations

import asyncio

from gateway.envelope import Reply, ReplyAddress
from gateway.testing import running_gateway
from storage import PendingChunk, Store, analyze_stale_queue_tables

# the shape of OutboxRepo.claim's search (its anti-join is what goes quadratic)
_CLAIM_SEARCH = """
SELECT o.id FROM outbox o
WHERE o.status IN ('pending', 'sending')
  AND ((o.status = 'pending' AND o.next_attempt_at <= clock_timestamp())
       OR (o.status = 'sending' AND o.lease_until < clock_timestamp()))
  AND ($1::text[] IS NULL OR o.channel = ANY($1::text[]))
  AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.destination = o.destination
                  AND p.status IN ('pending', 'sending') AND p.id < o.id)
ORDER BY o.next_attempt_at, o.id LIMIT 1
"""


async def generic_plan(store: Store) -> str:
    async with store.db.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE search(text[]) AS {_CLAIM_SEARCH}")
        try:
            rows = await conn.fetch("EXPLAIN EXECUTE search(NULL)")
        finally:
            await conn.execute("DEALLOCATE search")
    return "\n".join(r[0] for r in rows)


async def burst(store: Store, n: int) -> None:
    chunks = [PendingChunk(0, ReplyAddress("fake", "test", {"conversation": f"c{i}"}), f"fake:test:c{i}",
                           Reply(text=f"broadcast {i}")) for i in range(n)]
    await store.outbox.enqueue(chunks, 3600)


async def stats_show_changes(store: Store, table: str) -> None:
    """Backends report their counts to the statistics system within a second or so."""
    for _ in range(200):
        n = await store.db.fetch("SELECT n_mod_since_analyze AS n FROM pg_stat_user_tables WHERE relname = $1",
                                 table)
        if n and n[0]["n"] > 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no changes to {table} reported")


async def test_after_a_burst_the_keeper_analyzes_and_the_claim_probes_the_index(store: Store) -> None:
    await burst(store, 1)
    await store.db.fetch("ANALYZE outbox")  # statistics of a nearly empty table, as on day one
    assert "outbox_live_dest" not in await generic_plan(store)  # the premise: a scan per candidate
    await burst(store, 1500)
    await stats_show_changes(store, "outbox")

    assert await analyze_stale_queue_tables(store.db) == ["outbox"]
    assert "outbox_live_dest" in await generic_plan(store)
    assert await analyze_stale_queue_tables(store.db) == []  # nothing changed since: only the check


async def test_a_small_change_analyzes_nothing(store: Store) -> None:
    await store.db.fetch("ANALYZE outbox")
    await burst(store, 10)  # below autovacuum's 50 rows
    await stats_show_changes(store, "outbox")
    assert await analyze_stale_queue_tables(store.db) == []


async def test_a_running_gateway_keeps_the_stats_fresh(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url) as h:
        store: Store = h.gateway.store
        await burst(store, 200)  # (the fake channel delivers them meanwhile: changes all the same)
        for _ in range(300):  # the keeper looks every 2 s; stats arrive within a second or so
            analyzed = await store.db.fetch(
                "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'outbox'")
            if analyzed and analyzed[0]["last_analyze"] is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the running gateway never analyzed the outbox after a burst")
