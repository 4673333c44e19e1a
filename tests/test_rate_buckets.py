"""The shared GCRA buckets (storage/ratelimit.py): book only what conforms soon, all keys or none.

Real Postgres; no timings are asserted beyond the bucket arithmetic itself
(waits of whole intervals, far larger than any scheduling noise).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import pytest

from storage import Store


async def tats(store: Store) -> dict[str, float]:
    rows = await store.db.fetch("SELECT key, extract(epoch FROM tat - clock_timestamp())::float8 AS ahead"
                                " FROM rate_buckets")
    return {r["key"]: r["ahead"] for r in rows}


async def test_a_refused_reservation_changes_no_bucket(store: Store) -> None:
    rates = store.rates
    first = await rates.try_reserve([("chat", 10.0, 1), ("bot", 0.1, 1)], 1.0)
    assert first.granted and first.wait == 0
    before = await tats(store)
    refused = await rates.try_reserve([("chat", 10.0, 1), ("bot", 0.1, 1)], 1.0)
    assert not refused.granted and 9 < refused.wait <= 10 and refused.blocking == ("chat",)
    after = await tats(store)
    # nothing burned: the bot bucket was not charged for a send that does not go
    assert after.keys() == before.keys() and all(after[k] <= before[k] for k in before)
    # another chat of the same bot still gets the bot's next slot at once
    other = await rates.try_reserve([("chat2", 10.0, 1), ("bot", 0.1, 1)], 1.0)
    assert other.granted and other.wait <= 0.1


async def test_every_bucket_is_charged_for_the_moment_the_send_goes(store: Store) -> None:
    rates = store.rates
    await rates.reserve([("chat", 2.0, 1)])
    # the chat holds this send back ~2 s: the bot is charged for then, not for now
    res = await rates.try_reserve([("chat", 2.0, 1), ("bot", 0.5, 1)], 5.0)
    assert res.granted and 1.5 < res.wait <= 2.0
    bot = (await tats(store))["bot"]
    assert bot > res.wait + 0.4  # slot (~2 s) + interval, not now + interval
    # so another chat's send through the same bot goes after this one, not in the hole before it
    other = await rates.try_reserve([("chat3", 2.0, 1), ("bot", 0.5, 1)], 5.0)
    assert other.granted and other.wait > res.wait


async def test_burst_tolerance_and_the_old_reserve_still_work(store: Store) -> None:
    rates = store.rates
    waits = [await rates.reserve([("b", 1.0, 3)]) for _ in range(4)]
    assert waits[:3] == [0, 0, 0] and 0.9 < waits[3] <= 1.0
    # reserve() books whatever the wait
    assert 1.9 < await rates.reserve([("b", 1.0, 3)]) <= 2.0


async def test_penalty_blocks_and_settle_moves_the_bucket_after_a_late_send(store: Store) -> None:
    rates = store.rates
    await rates.penalize("p", 30)
    res = await rates.try_reserve([("p", 0.1, 1)], 1.0)
    assert not res.granted and res.wait > 29 and res.blocking == ("p",)
    # a send booked now but left 0 s ago, 3 s late relative to nothing: the next one is an interval after it
    await rates.reserve([("s", 5.0, 1)])
    await rates.settle([("s", 5.0)], 0.0)
    assert 4.5 < (await tats(store))["s"] <= 5.0 + 0.5
    # settling never moves a bucket back
    await rates.settle([("s", 0.1)], 0.0)
    assert (await tats(store))["s"] > 4.5
    await rates.settle([("unknown", 1.0)], 0.0)  # no bucket yet: nothing to move
    assert "unknown" not in await tats(store)


async def test_concurrent_reservations_never_share_a_slot(store: Store) -> None:
    """Many instances at once on a new and on an existing bucket: GCRA holds cluster-wide."""
    limiters = [Store(store.db).rates for _ in range(6)]
    for key in ("fresh", "old"):
        if key == "old":
            await store.rates.reserve([("old", 0.5, 1)])
            await store.db.fetch("UPDATE rate_buckets SET tat = clock_timestamp() WHERE key = 'old'")
        results = await asyncio.gather(*(r.try_reserve([(key, 0.5, 1), ("shared", 0.01, 1)], 10.0)
                                         for r in limiters))
        assert all(r.granted for r in results)
        waits = sorted(r.wait for r in results)
        # six sends, each an interval after the one before (0, 0.5, 1.0, ...)
        assert all(b - a > 0.45 for a, b in itertools.pairwise(waits)), waits


@pytest.mark.parametrize("bad", [
    [("", 1.0, 1)], [("k", 0.0, 1)], [("k", -1.0, 1)], [("k", math.nan, 1)], [("k", math.inf, 1)],
    [("k", 1.0, 0)], [("k", 1.0, 1.5)],
])
async def test_bad_limits_are_refused_and_change_nothing(store: Store, bad: list[Any]) -> None:
    with pytest.raises(ValueError, match=r"rate limit|key"):
        limits: list[Any] = [("good", 1.0, 1), *bad]
        await store.rates.try_reserve(limits, 1.0)
    with pytest.raises(ValueError):
        await store.rates.try_reserve([("good", 1.0, 1)], -1.0)
    assert await tats(store) == {}
