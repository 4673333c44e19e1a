"""Delivery pacing: a queue behind one slow bucket holds no worker; a given-back row keeps its place.

Real gateway, real Postgres, aiogram against the fake Bot API with Telegram's
documented limits enforced as strict sliding windows. The fakes run on an event
loop of their own (a thread), as a platform would: the test stalls the
gateway's loop busy, and a fake sharing it would stamp arrivals late.
Assertions are on order and counts, never on durations.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from gateway import RateLimit, Reply, ReplyAddress
from gateway.pacing import Pacer
from gateway.testing import FakeAdapter, make_envelope, running_gateway, test_config
from storage import PendingChunk
from tests.fakes.telegram import FakeTelegram, RateLimits, SentMessage

_order = itertools.count()  # arrival order across every fake of a test


class OrderedTelegram(FakeTelegram):
    """The fake Bot API, numbering every accepted message across fakes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order: list[int] = []

    async def _record(self, record: SentMessage, into: list[SentMessage]) -> None:
        self.order.append(next(_order))
        await super()._record(record, into)


@contextmanager
def fakes_in_a_thread(*tokens: str) -> Iterator[list[OrderedTelegram]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fakes = [OrderedTelegram(token, rate_limits=RateLimits()) for token in tokens]
    try:
        for fake in fakes:
            asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        yield fakes
    finally:
        for fake in fakes:
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@asynccontextmanager
async def telegram_gateway(db: str, fakes: dict[str, FakeTelegram]) -> AsyncIterator[Any]:
    channels = {"telegram": {name: {"token": f.token, "api_base": f.base_url, "poll_timeout": 1}
                             for name, f in fakes.items()}}
    async with running_gateway(db, config=test_config({"channels": channels})) as h:
        yield h


async def until(check: Any, within: float = 60.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - the condition lives in another thread
            await asyncio.sleep(0.02)


async def broadcast(gw: Any, account: str, chats: range) -> None:
    """One row per chat, as replies to that many conversations would be."""
    adapter = gw.adapters[("telegram", account)]
    chunks = []
    for chat in chats:
        [chunk] = adapter.render(Reply(text=f"broadcast {chat}"))
        address = ReplyAddress("telegram", account, {"chat_id": chat, "chat_type": "private"})
        chunks.append(PendingChunk(0, address, f"telegram:{account}:{chat}:", chunk))
    await gw.store.outbox.enqueue(chunks, 3600)


async def test_a_broadcast_does_not_hold_the_workers_other_destinations_need(
    soulgate_database_url: str,
) -> None:
    """150 chats through bot A (28/s: the bot bucket is the queue), then 3 messages to a
    chat of bot B. Before, every worker slept on A's bucket holding a row, and B's rows
    were claimed only once the broadcast had been; now A holds at most half the workers."""
    with fakes_in_a_thread("7001:AAA", "7002:BBB") as (a, b):
        async with telegram_gateway(soulgate_database_url, {"a": a, "b": b}) as h:
            gw = h.gateway
            await broadcast(gw, "a", range(100_000, 100_150))
            chat = ReplyAddress("telegram", "b", {"chat_id": 1001, "chat_type": "private"})
            for i in range(3):
                await gw.services.send(chat, f"conversation {i}")
            await until(lambda: len(a.sent) == 150 and len(b.sent) == 3)
            assert max(b.order) < max(a.order)  # B was served while A's broadcast was still going
            assert a.count_429 == 0 and b.count_429 == 0
            assert [m.text for m in b.sent] == [f"conversation {i}" for i in range(3)]
            assert (await gw.store.outbox.counts())["pending"] == 0


async def test_a_row_given_back_keeps_its_place_in_its_destination(soulgate_database_url: str) -> None:
    """Every row waits longer than a worker waits inline (0.4 s interval), so each is given
    back before it goes; a destination's rows still go in order, no attempt is counted for
    the give-backs, and the other destination is not held up behind them."""
    adapter = FakeAdapter(limits=lambda address: [RateLimit(f"conv:{address.data['conversation']}", 0.4, 1)])
    async with running_gateway(soulgate_database_url, adapter=adapter) as h:
        outbox = h.gateway.store.outbox
        slow = [PendingChunk(0, ReplyAddress("fake", "test", {"conversation": "slow"}), "fake:test:slow:",
                             Reply(text=f"slow {i}")) for i in range(4)]
        await outbox.enqueue(slow, 3600)
        other = make_envelope("x", conversation="other")
        await outbox.enqueue([PendingChunk(0, other.reply_to, other.conversation_key, Reply(text="other"))], 3600)
        sent = await adapter.wait_sent(5, timeout=30)
        texts = [m.reply.text for m in sent]
        assert [t for t in texts if t.startswith("slow")] == [f"slow {i}" for i in range(4)]
        assert texts.index("other") < texts.index("slow 3")
        await h.idle()
        rows = await h.gateway.store.db.fetch("SELECT attempts, status FROM outbox ORDER BY id")
        assert [(r["attempts"], r["status"]) for r in rows] == [(1, "sent")] * 5


def test_pacer_gates_a_shared_bucket_only() -> None:
    now = [0.0]
    reopened: list[int] = []
    pacer = Pacer(cap=2, clock=lambda: now[0], on_reopen=lambda: reopened.append(1))
    route = ("telegram", "bot")
    # one destination's own bucket: never gates the account, however many wait on it
    with pacer.holding(["chat:1", "bot"], route, "d1"), pacer.holding(["chat:1"], route, "d1"):
        assert pacer.skipped() == []
    # the bot bucket seen by two destinations is shared: full at two holders
    with pacer.holding(["chat:1", "bot"], route, "d1"):
        with pacer.holding(["chat:2", "bot"], route, "d2"):
            assert pacer.skipped() == [route]
        assert pacer.skipped() == [] and reopened == [1]
    assert pacer.skipped() == []  # nobody holds it now: forgotten
    # refused for one destination: not yet known to be shared, so nothing is skipped
    pacer.refused(("bot",), route, "d3", 5.0)
    assert pacer.skipped() == [] and pacer.reopens_in() is None
    # a second destination meets it: shared, blocked for the rest of the 5 s
    assert pacer.blocked_for(["chat:4", "bot"], route, "d4") == 5.0
    assert pacer.skipped() == [route] and pacer.reopens_in() == 5.0
    now[0] = 6.0
    assert pacer.skipped() == [] and pacer.blocked_for(["bot"], route, "d5") is None
