"""Adapter state with an expiry (storage/state.py, migration 008): it reads as absent once
expired, the worker instances delete it, and a bad expiry is refused without a write."""

from __future__ import annotations

import asyncio
import math

import pytest

from gateway.runtime import Gateway
from gateway.testing import test_config
from storage import Database, StateRepo, keep_state_pruned, prune_expired_state


async def _expire(db: Database, key: str) -> None:
    """As if its time had passed (no sleeping in tests)."""
    await db.fetch("UPDATE kv_state SET expires_at = now() - interval '1 second' WHERE key = $1", key)


async def _keys(db: Database) -> list[str]:
    return [r["key"] for r in await db.fetch("SELECT key FROM kv_state ORDER BY key")]


async def test_expired_state_reads_as_absent_then_is_deleted(db: Database) -> None:
    state = StateRepo(db)
    await state.set("offset", {"n": 1})  # no expiry: kept
    await state.set("attachment", "bytes", expires_in=30 * 86_400)
    await state.set("thread", True, expires_in=3600)
    [row] = await db.fetch("SELECT expires_at - now() AS left FROM kv_state WHERE key = 'attachment'")
    assert 29.9 < row["left"].total_seconds() / 86_400 <= 30
    assert await state.get("attachment") == "bytes"

    await _expire(db, "attachment")
    assert await state.get("attachment") is None  # at once, before any pruning
    assert await state.get("thread") is True and await state.get("offset") == {"n": 1}
    assert await prune_expired_state(db) == 1
    assert await _keys(db) == ["offset", "thread"]
    assert await prune_expired_state(db) == 0

    # Writing a key again sets its expiry anew; without one, the value is kept for good.
    await state.set("thread", False)
    assert [r["expires_at"] for r in await db.fetch("SELECT expires_at FROM kv_state WHERE key = 'thread'")] == [None]
    assert await state.get("thread") is False


async def test_pruning_goes_in_batches(db: Database) -> None:
    await db.fetch("INSERT INTO kv_state (key, value, expires_at)"
                   " SELECT 'k' || g, 'true'::jsonb, now() - interval '1 minute' FROM generate_series(1, 2500) g")
    await StateRepo(db).set("kept", 1)
    assert await prune_expired_state(db, batch=1000) == 2500
    assert await _keys(db) == ["kept"]


@pytest.mark.parametrize("bad", [0, -5, math.nan, math.inf, True, "3600"])
async def test_a_bad_expiry_is_refused_and_changes_nothing(db: Database, bad: object) -> None:
    state = StateRepo(db)
    await state.set("k", "before")
    with pytest.raises(ValueError, match="expires_in must be a positive number of seconds"):
        await state.set("k", "after", expires_in=bad)  # type: ignore[arg-type]
    assert await state.get("k") == "before"
    assert [r["expires_at"] for r in await db.fetch("SELECT expires_at FROM kv_state")] == [None]


async def test_worker_roles_prune_and_ingress_does_not(soulgate_database_url: str) -> None:
    for role, prunes in (("all", True), ("worker", True), ("ingress", False)):
        gw = Gateway(test_config(), role=role, entry_points=False,  # type: ignore[arg-type]
                     database_url=soulgate_database_url)
        await gw.start()
        try:
            names = {t.get_name() for t in gw._tasks}
        finally:
            await gw.stop()
        assert ("state-prune" in names) is prunes, role


async def test_the_pruning_loop_deletes_what_expired(db: Database) -> None:
    state = StateRepo(db)
    await state.set("gone", 1, expires_in=3600)
    await state.set("kept", 2)
    await _expire(db, "gone")
    task = asyncio.create_task(keep_state_pruned(db, every=0.01))
    try:
        for _ in range(200):
            if await _keys(db) == ["kept"]:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert await _keys(db) == ["kept"]
