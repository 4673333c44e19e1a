"""A notification wakes one idle dispatch worker, not all of them.

Before, every NOTIFY woke every idle worker and all but one ran a claim that found
nothing (N statements per message with N workers, per instance). The count of claim
statements is exact (asyncpg's query logger), so this needs no timing.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from gateway.context import WakeOne
from gateway.testing import running_gateway, test_config
from storage import Database, listen_forever

from .test_pipeline import echo, responder_plugin


async def test_set_wakes_exactly_one_waiter() -> None:
    wake = WakeOne()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await wake.wait()
        woken.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(4)]
    await asyncio.sleep(0)
    wake.set()
    await asyncio.sleep(0.01)
    assert woken == [0]
    wake.set()
    wake.set()
    await asyncio.sleep(0.01)
    assert woken == [0, 1, 2]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_set_with_nobody_waiting_is_kept_for_the_next_wait_once() -> None:
    wake = WakeOne()
    wake.set()
    assert wake.is_set()
    await asyncio.wait_for(wake.wait(), 1)  # returns at once, and consumes it
    assert not wake.is_set()
    wake.set()
    wake.clear()  # a worker about to claim takes it back
    try:
        await asyncio.wait_for(wake.wait(), 0.05)
        raise AssertionError("a cleared wake-up still woke the waiter")
    except TimeoutError:
        pass


async def test_a_waiter_that_timed_out_does_not_swallow_the_wakeup() -> None:
    wake = WakeOne()
    try:
        await asyncio.wait_for(wake.wait(), 0.01)
    except TimeoutError:
        pass
    got = asyncio.create_task(wake.wait())
    await asyncio.sleep(0)
    wake.set()
    await asyncio.wait_for(got, 1)


async def test_idle_workers_do_not_all_claim_on_each_message(soulgate_database_url: str) -> None:
    config = test_config({"workers": {"dispatch": 8, "delivery": 8, "idle_poll_seconds": 30.0}})
    async with running_gateway(soulgate_database_url, config=config,
                               plugins=[("echo", responder_plugin(echo))]) as h:
        await h.ask("warm up")
        await h.idle()
        await asyncio.sleep(0.3)  # the warm-up's delivery worker takes its look after the send
        claims = sends = 0

        def count(record: Any) -> None:
            nonlocal claims, sends
            # separate claim statements (not the commits that claim the next row)
            if "FOR UPDATE OF i SKIP LOCKED" in record.query and "UPDATE inbox SET status = $3" not in record.query:
                claims += 1
            if "FOR UPDATE OF o SKIP LOCKED" in record.query:
                sends += 1

        pool = h.gateway.store.db.pool
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        for conn in held:
            conn.add_query_logger(count)
        for conn in held:
            await pool.release(conn)
        claims = sends = 0
        messages = 10
        for i in range(messages):
            assert await h.ask(f"m{i}") == f"m{i}".join(["echo: ", ""])
        # per message: the claim that gets the row and one by the worker it woke (which finds
        # nothing); the worker's look for its next row rides on its commit (not counted
        # here). 8 workers all claiming on each NOTIFY made it 144.
        assert claims <= messages * 2, claims
        # delivery: the claim that gets the chunk, the worker it woke, the look after the send
        await h.idle()
        assert sends <= messages * 3, sends


async def test_a_poke_reaches_local_listeners_at_once_and_its_echo_is_ignored(
    soulgate_database_url: str,
) -> None:
    db = Database(soulgate_database_url)
    await db.connect()
    heard: list[str] = []
    listener = asyncio.create_task(listen_forever(db, {"soulgate_test": lambda: heard.append("x")}))
    try:
        for _ in range(100):  # the listener calls each handler once when it is connected
            if heard:
                break
            await asyncio.sleep(0.05)
        heard.clear()
        db.notify_soon("soulgate_test")
        assert heard == ["x"]  # in-process, before any round trip
        await asyncio.sleep(0.5)
        assert heard == ["x"]  # the NOTIFY came back and was recognised as ours
        async with db.pool.acquire() as conn:  # another process's NOTIFY is heard
            await conn.execute("SELECT pg_notify('soulgate_test', '')")
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
        assert heard == ["x", "x"]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await db.close()


async def test_steady_pokes_share_notifies_spaced_by_the_minimum_interval(soulgate_database_url: str) -> None:
    # each NOTIFY is a commit under Postgres's notify lock and wakes every listening process:
    # under load the pokes wait for the interval and go together; the first goes at once
    db = Database(soulgate_database_url)
    await db.connect()
    sent: list[float] = []
    loop = asyncio.get_running_loop()

    def log_notify(record: Any) -> None:
        if "pg_notify" in record.query:
            sent.append(loop.time())

    pool = db.pool
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    for conn in held:
        conn.add_query_logger(log_notify)
        await pool.release(conn)
    db.notifier.min_interval = 0.2
    try:
        start = loop.time()
        while loop.time() - start < 0.5:  # a poke every 5 ms for half a second
            db.notify_soon("soulgate_test")
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
    finally:
        await db.close()
    assert sent and sent[0] - start < 0.15  # the first wake-up was not held back
    assert 2 <= len(sent) <= 4, sent  # ~100 pokes: one NOTIFY per interval, not one per round trip
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(sent))
