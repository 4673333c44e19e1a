"""A statement commits but its answer is lost with the connection.

That is what a Postgres restart, a failover or a cut network does to a statement
in flight, and it happens at random under load (tests/faults/test_pg_restart.py).
Here a proxy (tests/fakes/pgproxy.py) makes it happen at one chosen statement:
the claim of an inbox row, a turn's commit that also claimed the next row, the
claim of an outbox row. In each case the row is claimed in the database for a
worker that never heard so. The worker still knows the token it sent and takes
that row back at once; without that, the conversation (or destination) waits
out the lease, 30 s here, and a send on a never_twice channel is parked as
"maybe sent" although it never left.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from gateway import Reply, ReplyAddress, Turn, TurnResult, hookimpl
from gateway.testing import FakeAdapter, make_envelope, running_gateway, test_config
from storage import PendingChunk, Store, TurnRecord, commit_turn
from tests.fakes.pgproxy import AnswerLosingProxy

from . import echo_plugin

LEASE = 30.0  # far longer than any wait below: a row left to its lease fails the test
QUICK = 10.0  # the answer must come within this despite the lost statement


@pytest_asyncio.fixture
async def proxy(soulgate_database_url: str) -> AsyncIterator[AnswerLosingProxy]:
    async with AnswerLosingProxy(soulgate_database_url) as p:
        yield p


def config(**workers: Any) -> Any:
    return test_config({"workers": {"lease_seconds": LEASE, "dispatch": 1, "delivery": 1, **workers}})


class Recording:
    """Answers ``re: <text>``; a message whose text starts with "hold" waits for ``go``."""

    def __init__(self) -> None:
        self.turns: list[str] = []
        self.holding = asyncio.Event()
        self.go = asyncio.Event()

    async def respond(self, turn: Turn) -> TurnResult:
        self.turns.append(turn.envelope.text)
        if turn.envelope.text.startswith("hold"):
            self.holding.set()
            await self.go.wait()
        return TurnResult(replies=[Reply(text=f"re: {turn.envelope.text}")])

    def plugin(self) -> object:
        responder = self

        @hookimpl
        def soulgate_responder(services: Any) -> Recording:
            return responder

        return type("RecordingPlugin", (), {"soulgate_responder": staticmethod(soulgate_responder)})


async def test_a_claim_whose_answer_was_lost_is_taken_back_at_once(proxy: AnswerLosingProxy) -> None:
    rec = Recording()
    async with running_gateway(proxy.url, config=config(), plugins=[("rec", rec.plugin())]) as h:
        proxy.lose_answer_containing("claim-probe")  # the claim is the first answer carrying the text
        await h.send("claim-probe")
        await h.expect_reply("re: claim-probe", timeout=QUICK)
        assert proxy.lost.is_set(), "no answer was lost: the test tested nothing"
        assert rec.turns == ["claim-probe"]  # run once
        await h.idle()


async def test_a_commit_whose_answer_was_lost_counts_and_hands_over_its_next_row(
    proxy: AnswerLosingProxy,
) -> None:
    rec = Recording()
    async with running_gateway(proxy.url, config=config(), plugins=[("rec", rec.plugin())]) as h:
        await h.send("hold first")
        await asyncio.wait_for(rec.holding.wait(), QUICK)
        await h.send("second")  # waits behind the first, claimed by the first turn's commit
        proxy.lose_answer_containing("second")  # ... whose answer carries it
        rec.go.set()
        await h.expect_reply("re: hold first", timeout=QUICK)
        await h.expect_reply("re: second", timeout=QUICK)
        assert proxy.lost.is_set(), "no answer was lost: the test tested nothing"
        assert rec.turns == ["hold first", "second"]  # each turn ran once
        await h.idle()
        turns = await h.gateway.store.db.fetch("SELECT status, attempts FROM inbox ORDER BY seq")
        assert [(r["status"], r["attempts"]) for r in turns] == [("done", 1), ("done", 1)]


async def test_an_outbox_claim_whose_answer_was_lost_is_sent_once_even_never_twice(
    proxy: AnswerLosingProxy,
) -> None:
    adapter = FakeAdapter(delivery_policy="never_twice")
    async with running_gateway(proxy.url, config=config(), adapter=adapter,
                               plugins=[("echo", echo_plugin)]) as h:
        proxy.lose_answer_containing("echo: send-probe")  # the outbox claim returns the body
        await h.send("send-probe")
        await h.expect_reply("echo: send-probe", timeout=QUICK)
        assert proxy.lost.is_set(), "no answer was lost: the test tested nothing"
        await h.idle()
        rows = await h.gateway.store.db.fetch("SELECT status FROM outbox")
        assert [r["status"] for r in rows] == ["sent"]  # not parked as "maybe sent"
        assert [m.text for m in adapter.sent] == ["echo: send-probe"]


# -- the storage side: what a reclaim hands back -------------------------------------------------


async def test_reclaim_hands_back_only_the_row_of_that_token(store: Store) -> None:
    await store.inbox.admit(make_envelope("a", channel="fake", account="test"))
    token = uuid.uuid4()
    assert await store.inbox.reclaim(token, 30) is None  # nothing claimed under it yet
    claimed = await store.inbox.claim("w", 30, token=token)
    assert claimed is not None
    again = await store.inbox.reclaim(token, 30)
    assert again is not None and (again.inbox_id, again.token, again.attempts) == (
        claimed.inbox_id, claimed.token, 1)  # the same claim: no attempt counted twice
    assert await store.inbox.reclaim(uuid.uuid4(), 30) is None
    await commit_turn(store.db, again, TurnRecord(), ttl_seconds=60)
    assert await store.inbox.reclaim(token, 30) is None  # finished rows are not handed out


async def test_an_outbox_reclaim_assumes_maybe_sent_only_after_an_earlier_attempt(store: Store) -> None:
    address = ReplyAddress("fake", "test", {"conversation": "c"})
    await store.outbox.enqueue([PendingChunk(seq=0, address=address, destination="c",
                                             reply=Reply(text="hi"))], ttl_seconds=60)
    first = uuid.uuid4()
    assert await store.outbox.claim(30, token=first) is not None
    item = await store.outbox.reclaim(first, 30)
    assert item is not None and not item.was_sending  # nothing can have left under this claim
    await store.outbox.retry_later(item, 0, "the send failed")  # a counted attempt
    second = uuid.uuid4()
    assert await store.outbox.claim(30, token=second) is not None
    item = await store.outbox.reclaim(second, 30)
    # the lost claim hid whether the row was 'sending' before it (a crashed send): assume so
    assert item is not None and item.was_sending and item.attempts == 2
    assert await store.outbox.reclaim(first, 30) is None  # a stale token gets nothing
