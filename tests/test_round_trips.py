"""Admission and the turn commit are one statement each, and still all-or-nothing.

Issue 9's ingress and dequeue targets are bound by round trips to Postgres
(docs/performance.md): admission was 5 statements, a turn's commit 5 to 9. These
tests count the statements with asyncpg's query logger (no timings), and check that
the single statements keep what the transactions guaranteed: a duplicate writes
nothing, a lost lease writes nothing, bad values from outside still store.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.envelope import Reply
from gateway.testing import make_envelope
from storage import (
    HTTP_REPLY_CHANNEL,
    Database,
    LostClaim,
    PendingChunk,
    Store,
    TurnRecord,
    commit_turn,
    listen_forever,
)


class Counting:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.statements: list[str] = []

    def __call__(self, record: Any) -> None:
        self.statements.append(record.query)

    async def attach(self) -> None:
        pool = self.store.db.pool
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        for conn in held:
            conn.add_query_logger(self)
        for conn in held:
            await pool.release(conn)

    def take(self) -> list[str]:
        """The statements since the last call, without the wake-ups sent after the commit."""
        out, self.statements = self.statements, []
        return [q for q in out if "pg_notify" not in q]

    async def wakeups(self) -> int:
        await asyncio.sleep(0.1)  # they are sent by a task of their own, after the write
        out, self.statements = self.statements, []
        return sum("pg_notify" in q for q in out)



async def _count(store: Store, sql: str, *args: Any) -> int:
    return int((await store.db.fetch(sql, *args))[0]["n"])


async def test_admission_is_one_statement_new_or_duplicate(store: Store) -> None:
    # admissions go over connections of their own (Database.lane), counted by the batcher;
    # the wake-ups go over the pool, seen by the query logger
    counter = Counting(store)
    await counter.attach()
    admissions = store.inbox.admissions
    env = make_envelope("hello", external_id="e-1")
    assert await store.inbox.admit(env) == (env.id, True)
    assert admissions.statements == 1
    assert await counter.wakeups() == 1
    again = make_envelope("hello", external_id="e-1")
    assert await store.inbox.admit(again) == (env.id, False)
    assert admissions.statements == 2
    assert await counter.wakeups() == 0  # a duplicate wakes nobody
    assert counter.take() == []  # nothing else went over the pool


async def test_a_burst_of_admissions_shares_statements_and_wakeups(store: Store) -> None:
    counter = Counting(store)
    await counter.attach()
    results = await asyncio.gather(*(store.inbox.admit(make_envelope(f"m{i}")) for i in range(40)))
    assert all(created for _, created in results)
    # the ones that queued behind a statement in flight share the next
    assert store.inbox.admissions.events == 40 and 1 <= store.inbox.admissions.statements < 10
    assert 1 <= await counter.wakeups() < 40  # coalesced: one NOTIFY in flight at a time


async def test_partial_key_conflict_writes_nothing_and_names_the_owner(store: Store) -> None:
    first = make_envelope("a", external_id="k-1")
    await store.inbox.admit(first)
    twin = make_envelope("a", external_id="k-new", alt_ids=("k-1",))
    assert await store.inbox.admit(twin) == (first.id, False)
    # the twin's own key was taken back: an unrelated later event under it is new
    assert await _count(store, "SELECT count(*) AS n FROM inbox_keys WHERE key = 'k-new'") == 0
    later = make_envelope("b", external_id="k-new")
    assert await store.inbox.admit(later) == (later.id, True)
    assert await _count(store, "SELECT count(*) AS n FROM inbox") == 2


async def test_concurrent_admissions_of_one_event_store_it_once(store: Store) -> None:
    copies = [make_envelope("same", external_id="race-1", alt_ids=("race-alt",)) for _ in range(12)]
    results = await asyncio.gather(*(store.inbox.admit(c) for c in copies))
    created = [r for r in results if r[1]]
    assert len(created) == 1
    assert {r[0] for r in results} == {created[0][0]}
    assert await _count(store, "SELECT count(*) AS n FROM inbox") == 1
    assert await _count(store, "SELECT count(*) AS n FROM inbox_keys") == 2


async def test_keys_that_clean_to_the_same_text_are_one_key(store: Store) -> None:
    env = make_envelope("nul \x00 and \ud800", external_id="x\x00", alt_ids=("x\ud800",))
    inbox_id, created = await store.inbox.admit(env)
    assert created and inbox_id == env.id
    claim = await store.inbox.claim("w", 30)
    assert claim is not None and claim.envelope.text == "nul \ufffd and \ufffd"
    assert claim.envelope.external_id == "x\ufffd"


def _record(claim_env: Any) -> TurnRecord:
    record = TurnRecord()
    for i, text in enumerate(["one", "two", "three"]):
        record.chunks.append(PendingChunk(seq=i, address=claim_env.reply_to,
                                          destination=claim_env.conversation_key, reply=Reply(text=text)))
    record.history = [("user", "hi", {"sender": "u"}), ("assistant", "one two three", {"n": float("nan")}),
                      ("assistant", "with \x00 nul", {})]
    record.audit = [("command", "core", {"command": "help"})]
    record.runs = [{"agent": "a", "model": "m", "input_tokens": 12.0, "output_tokens": 3,
                    "latency_ms": 5, "cost_usd": float("nan"), "success": True, "detail": {"x": 1}}]
    return record


async def test_turn_commit_is_one_statement_and_keeps_order(store: Store) -> None:
    env = make_envelope("hi", conversation="c-order")
    await store.inbox.admit(env)
    claim = await store.inbox.claim("w", 30)
    assert claim is not None
    counter = Counting(store)
    await counter.attach()
    await commit_turn(store.db, claim, _record(claim.envelope), ttl_seconds=60)
    assert len(counter.take()) == 1
    assert await counter.wakeups() == 1  # delivery workers, after the commit
    rows = await store.db.fetch("SELECT seq, body FROM outbox ORDER BY id")
    assert [(r["seq"], r["body"]["text"]) for r in rows] == [(0, "one"), (1, "two"), (2, "three")]
    history = await store.conversations.history(env.conversation_key, 10)
    assert [h["content"] for h in history] == ["hi", "one two three", "with \ufffd nul"]
    assert history[1]["meta"] == {"n": None}
    runs = await store.db.fetch("SELECT input_tokens, output_tokens, cost_usd, success FROM agent_runs")
    assert [tuple(r) for r in runs] == [(12, 3, None, True)]
    assert await store.conversations.address(env.conversation_key) == env.reply_to
    assert (await store.inbox.get(claim.inbox_id) or {})["status"] == "done"


async def test_lost_lease_commits_nothing(store: Store) -> None:
    env = make_envelope("hi", conversation="c-lost")
    await store.inbox.admit(env)
    first = await store.inbox.claim("w1", 0.01)
    assert first is not None
    await asyncio.sleep(0.05)
    second = await store.inbox.claim("w2", 30)
    assert second is not None
    with pytest.raises(LostClaim):
        await commit_turn(store.db, first, _record(first.envelope), ttl_seconds=60)
    for table in ("outbox", "messages", "audit", "agent_runs", "conversations"):
        assert await _count(store, f"SELECT count(*) AS n FROM {table}") == 0, table
    await commit_turn(store.db, second, TurnRecord(), ttl_seconds=60)
    assert await _count(store, "SELECT count(*) AS n FROM conversations") == 1


async def test_unknown_run_field_is_refused_before_anything_is_written(store: Store) -> None:
    env = make_envelope("hi", conversation="c-bad")
    await store.inbox.admit(env)
    claim = await store.inbox.claim("w", 30)
    assert claim is not None
    with pytest.raises(ValueError, match="unknown fields"):
        await commit_turn(store.db, claim, TurnRecord(runs=[{"agent": "a", "tokens": 1}]), ttl_seconds=60)
    assert (await store.inbox.get(claim.inbox_id) or {})["status"] == "claimed"


async def test_commit_can_claim_the_next_row_in_the_same_statement_fifo_kept(store: Store) -> None:
    a1, a2 = make_envelope("a1", conversation="A"), make_envelope("a2", conversation="A")
    b1 = make_envelope("b1", conversation="B")
    for env in (a1, a2, b1):
        await store.inbox.admit(env)
    first = await store.inbox.claim("w", 30)
    assert first is not None and first.envelope.text == "a1"
    # another worker may not take a2 while a1 is live (FIFO within a conversation)
    other = await store.inbox.claim("w2", 30)
    assert other is not None and other.envelope.text == "b1"
    counter = Counting(store)
    await counter.attach()
    following = await commit_turn(store.db, first, TurnRecord(), ttl_seconds=60, claim_next=("w", 30))
    assert len(counter.take()) == 1
    # the row just finished counts as done: its conversation's next row is claimable at once
    assert following is not None and following.envelope.text == "a2" and following.attempts == 1
    assert await commit_turn(store.db, following, TurnRecord(), ttl_seconds=60, claim_next=("w", 30)) is None
    assert (await store.inbox.get(following.inbox_id) or {})["status"] == "done"


async def test_a_lost_lease_claims_nothing_next(store: Store) -> None:
    await store.inbox.admit(make_envelope("x", conversation="L"))
    await store.inbox.admit(make_envelope("y", conversation="M"))
    first = await store.inbox.claim("w1", 0.01)
    assert first is not None
    await asyncio.sleep(0.05)
    second = await store.inbox.claim("w2", 30)
    assert second is not None and second.inbox_id == first.inbox_id
    with pytest.raises(LostClaim):
        await commit_turn(store.db, first, TurnRecord(), ttl_seconds=60, claim_next=("w1", 30))
    assert await store.inbox.counts() == {"pending": 1, "claimed": 1}


async def test_http_turns_wake_the_waiting_handler_in_another_process(
    store: Store, soulgate_database_url: str
) -> None:
    """The reply wake-up left the triggers (migration 007): it is sent after the commits."""
    other = Database(soulgate_database_url)  # another instance: its own pool and tag
    await other.connect()
    heard: list[str] = []
    listener = asyncio.create_task(listen_forever(other, {HTTP_REPLY_CHANNEL: lambda: heard.append("x")}))
    try:
        await _until(lambda: bool(heard))
        heard.clear()
        env = make_envelope("hi", channel="http", account="api", conversation="h-1")
        await store.inbox.admit(env)
        claim = await store.inbox.claim("w", 30)
        assert claim is not None
        record = TurnRecord(chunks=[PendingChunk(seq=0, address=env.reply_to, destination=env.conversation_key,
                                                 reply=Reply(text="answer"))])
        await commit_turn(store.db, claim, record, ttl_seconds=60)
        await _until(lambda: len(heard) >= 1)  # the turn is committed
        item = await store.outbox.claim(30)
        assert item is not None
        assert await store.outbox.mark_sent(item, "m-1")
        await _until(lambda: len(heard) >= 2)  # its chunk reached a final status
        triggers = await _count(store, "SELECT count(*) AS n FROM pg_trigger WHERE tgname LIKE '%http_reply%'")
        assert triggers == 0
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await other.close()


async def _until(check: Any, within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not woken in time")


async def test_a_conversation_row_is_rewritten_only_when_its_address_or_title_changes(store: Store) -> None:
    from dataclasses import replace

    from gateway.envelope import ReplyAddress

    first = make_envelope("one", conversation="c-addr")
    await store.inbox.admit(first)
    claim = await store.inbox.claim("w", 30)
    assert claim is not None
    await commit_turn(store.db, claim, TurnRecord(), ttl_seconds=60)
    before = (await store.db.fetch("SELECT xmin::text AS v FROM conversations"))[0]["v"]
    same = make_envelope("two", conversation="c-addr")
    await store.inbox.admit(same)
    claim = await store.inbox.claim("w", 30)
    assert claim is not None
    await commit_turn(store.db, claim, TurnRecord(), ttl_seconds=60)
    assert (await store.db.fetch("SELECT xmin::text AS v FROM conversations"))[0]["v"] == before  # untouched
    moved = replace(make_envelope("three", conversation="c-addr"),
                    reply_to=ReplyAddress("fake", "test", {"conversation": "c-addr", "thread": "t-9"}))
    await store.inbox.admit(moved)
    claim = await store.inbox.claim("w", 30)
    assert claim is not None
    await commit_turn(store.db, claim, TurnRecord(), ttl_seconds=60)
    assert await store.conversations.address(moved.conversation_key) == moved.reply_to
