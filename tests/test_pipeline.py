"""The durable pipeline on real Postgres: dedup, ordering, crash safety, delivery retries."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from gateway import (
    OutcomeUnknown,
    PermanentDeliveryError,
    RateLimit,
    Reply,
    RetryAfter,
    TransientDeliveryError,
    Turn,
    TurnResult,
    hookimpl,
)
from gateway.dispatch import GENERIC_ERROR, Dispatcher
from gateway.testing import FakeAdapter, make_envelope, running_gateway, test_config
from storage import LostClaim, TurnRecord, commit_turn


def responder_plugin(respond: Any) -> types.SimpleNamespace:
    """A plugin object whose responder calls ``respond(turn)``."""

    class _Responder:
        name = "test"

        async def respond(self, turn: Turn) -> TurnResult:
            return await respond(turn)

    @hookimpl
    def soulgate_responder(services: Any) -> Any:
        return _Responder()

    return types.SimpleNamespace(soulgate_responder=soulgate_responder)


async def echo(turn: Turn) -> TurnResult:
    return TurnResult(replies=[Reply(text=f"echo: {turn.envelope.text}")])


async def test_message_answered_once_and_recorded(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url, plugins=[("echo", responder_plugin(echo))]) as h:
        assert await h.ask("hello") == "echo: hello"
        await h.idle()
        history = await h.services.history(make_envelope("x", conversation="conv-1").conversation_key)
        assert [(e.role, e.content) for e in history] == [("user", "hello"), ("assistant", "echo: hello")]


async def test_duplicate_external_id_gives_one_row_and_one_reply(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url, plugins=[("echo", responder_plugin(echo))]) as h:
        first = await h.send("hi", external_id="update-7")
        again = await h.send("hi", external_id="update-7")
        # a second natural key (e.g. Slack's app_mention/message twin) is a duplicate too
        twin = await h.send("hi", external_id="other-id", alt_ids=("update-7",))
        assert first.created and not again.created and not twin.created
        assert again.inbox_id == first.inbox_id == twin.inbox_id
        await h.expect_reply("echo: hi")
        await h.idle()
        assert len(h.adapter.sent) == 1
        rows = await h.gateway.store.db.fetch("SELECT count(*) AS n FROM inbox")
        assert rows[0]["n"] == 1


async def test_empty_message_is_ignored_and_not_stored(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url, plugins=[("echo", responder_plugin(echo))]) as h:
        result = await h.send("   \n ")
        assert not result.created
        await h.idle()
        rows = await h.gateway.store.db.fetch("SELECT count(*) AS n FROM inbox")
        assert rows[0]["n"] == 0 and h.adapter.sent == []


async def test_fifo_per_conversation_parallel_across(soulgate_database_url: str) -> None:
    order: dict[str, list[str]] = {"a": [], "b": []}
    active: set[str] = set()
    overlapped = asyncio.Event()

    async def slow(turn: Turn) -> TurnResult:
        conv = turn.envelope.conversation.id
        active.add(conv)
        if len(active) > 1:
            overlapped.set()
        await asyncio.sleep(0.02)
        order[conv].append(turn.envelope.text)
        active.discard(conv)
        return TurnResult(replies=[Reply(text=turn.envelope.text)])

    async with running_gateway(soulgate_database_url, plugins=[("slow", responder_plugin(slow))]) as h:
        for i in range(10):
            await h.send(f"a{i}", conversation="a")
            await h.send(f"b{i}", conversation="b")
        await h.adapter.wait_sent(20, timeout=30)
        await h.idle()
    assert order["a"] == [f"a{i}" for i in range(10)]
    assert order["b"] == [f"b{i}" for i in range(10)]
    assert overlapped.is_set(), "the two conversations never ran at the same time"
    sent_a = [m.text for m in h.adapter.sent if m.conversation == "a"]
    assert sent_a == [f"a{i}" for i in range(10)], "replies of a conversation must be delivered in order"


async def test_worker_killed_mid_turn_then_fresh_worker_answers_once(soulgate_database_url: str) -> None:
    entered = asyncio.Event()
    calls = 0

    async def hang_first(turn: Turn) -> TurnResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await asyncio.Event().wait()  # hangs until cancelled: the "crash"
        return TurnResult(replies=[Reply(text="finally")])

    config = test_config({"workers": {"dispatch": 1, "lease_seconds": 1.0}})
    plugin = responder_plugin(hang_first)
    async with running_gateway(soulgate_database_url, config=config, plugins=[("hang", plugin)]) as h:
        admitted = await h.send("do it")
        await asyncio.wait_for(entered.wait(), 10)
        dispatch_workers = h.gateway._workers[:1]
        for task in dispatch_workers:
            task.cancel()  # the worker dies after claiming, before committing
        await asyncio.gather(*dispatch_workers, return_exceptions=True)
        row = await h.gateway.store.inbox.get(admitted.inbox_id)
        assert row is not None and row["status"] == "claimed"
        fresh = asyncio.create_task(Dispatcher(h.gateway).worker("fresh"))
        try:
            await h.expect_reply("finally", timeout=15)
            await h.idle()
        finally:
            fresh.cancel()
        assert calls == 2
        assert len(h.adapter.sent) == 1
        outbox = await h.gateway.store.outbox.for_inbox(admitted.inbox_id)
        assert len(outbox) == 1 and outbox[0]["status"] == "sent"


async def test_stale_worker_cannot_commit_after_lease_was_taken(soulgate_database_url: str) -> None:
    config = test_config({"workers": {"dispatch": 1}})
    async with running_gateway(soulgate_database_url, config=config, start=False) as h:
        gw = h.gateway
        gw.load_plugins()
        await gw._connect()
        admitted = await gw.admit(make_envelope("x", channel="fake", account="test"))
        first = await gw.store.inbox.claim("w1", 0.01)
        assert first is not None
        await asyncio.sleep(0.05)
        second = await gw.store.inbox.claim("w2", 30)
        assert second is not None and second.inbox_id == first.inbox_id == admitted.inbox_id
        with pytest.raises(LostClaim):
            await commit_turn(gw.store.db, first, TurnRecord(), ttl_seconds=60)
        await commit_turn(gw.store.db, second, TurnRecord(), ttl_seconds=60)
        row = await gw.store.inbox.get(admitted.inbox_id)
        assert row is not None and row["status"] == "done"


async def test_transient_send_failures_are_retried_to_one_delivery(soulgate_database_url: str) -> None:
    adapter = FakeAdapter()
    adapter.fail_next(TransientDeliveryError("502"), ConnectionResetError("reset"))
    async with running_gateway(
        soulgate_database_url, adapter=adapter, plugins=[("echo", responder_plugin(echo))]
    ) as h:
        await h.send("retry me")
        await h.expect_reply("echo: retry me")
        await h.idle()
        assert adapter.attempts == 3 and len(adapter.sent) == 1
        dead = await h.gateway.store.outbox.dead()
        assert dead == []


async def test_retry_budget_spent_dead_letters_and_audits(soulgate_database_url: str) -> None:
    adapter = FakeAdapter()
    adapter.fail_next(*[TransientDeliveryError(f"down {i}") for i in range(3)])
    config = test_config({"delivery": {"max_attempts": 3}})
    async with running_gateway(
        soulgate_database_url, config=config, adapter=adapter, plugins=[("echo", responder_plugin(echo))]
    ) as h:
        admitted = await h.send("nobody home")
        await h.idle()
        dead = await h.gateway.store.outbox.dead()
        assert len(dead) == 1 and dead[0]["inbox_id"] == admitted.inbox_id
        assert dead[0]["attempts"] == 3 and "down 2" in dead[0]["last_error"]
        audit = await h.gateway.store.audit.recent(kind="delivery_dead")
        assert audit and audit[0]["detail"]["outbox_id"] == dead[0]["id"]
        assert adapter.sent == []


async def test_permanent_error_dead_letters_at_once(soulgate_database_url: str) -> None:
    adapter = FakeAdapter()
    adapter.fail_next(PermanentDeliveryError("chat not found"))
    async with running_gateway(
        soulgate_database_url, adapter=adapter, plugins=[("echo", responder_plugin(echo))]
    ) as h:
        await h.send("x")
        await h.idle()
        assert adapter.attempts == 1
        assert (await h.gateway.store.outbox.dead())[0]["status"] == "dead"


async def test_retry_after_is_honoured_without_spending_the_budget(soulgate_database_url: str) -> None:
    adapter = FakeAdapter(limits=lambda a: [RateLimit(f"fake:{a.data['conversation']}", 0.01)])
    adapter.fail_next(RetryAfter(0.5), RetryAfter(0.5))
    config = test_config({"delivery": {"max_attempts": 1}})
    async with running_gateway(
        soulgate_database_url, config=config, adapter=adapter, plugins=[("echo", responder_plugin(echo))]
    ) as h:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await h.send("slow down")
        await h.expect_reply("echo: slow down")
        assert loop.time() - start >= 0.9  # two Retry-After waits, each honoured
        assert adapter.attempts == 3  # with max_attempts=1: 429s did not count


async def test_unknown_outcome_is_not_repeated_on_never_twice(soulgate_database_url: str) -> None:
    adapter = FakeAdapter(delivery_policy="never_twice")
    adapter.fail_next(OutcomeUnknown("timeout after the request left"))
    async with running_gateway(
        soulgate_database_url, adapter=adapter, plugins=[("echo", responder_plugin(echo))]
    ) as h:
        await h.send("maybe posted")
        await h.idle()
        assert adapter.attempts == 1
        dead = await h.gateway.store.outbox.dead()
        assert dead[0]["status"] == "unknown"


async def test_unknown_outcome_is_retried_on_never_lost(soulgate_database_url: str) -> None:
    adapter = FakeAdapter(delivery_policy="never_lost")
    adapter.fail_next(OutcomeUnknown("timeout"))
    async with running_gateway(
        soulgate_database_url, adapter=adapter, plugins=[("echo", responder_plugin(echo))]
    ) as h:
        await h.send("must arrive")
        await h.expect_reply("echo: must arrive")
        assert adapter.attempts == 2


async def test_long_reply_is_chunked_and_delivered_in_order(soulgate_database_url: str) -> None:
    async def long(turn: Turn) -> TurnResult:
        return TurnResult(replies=[Reply(text="\n\n".join(f"paragraph {i} " + "x" * 50 for i in range(12)))])

    adapter = FakeAdapter(chunk_limit=200)
    async with running_gateway(
        soulgate_database_url, adapter=adapter, plugins=[("long", responder_plugin(long))]
    ) as h:
        await h.send("tell me everything")
        await h.idle()
        texts = [m.text for m in adapter.sent]
        assert len(texts) > 1 and all(len(t) <= 200 for t in texts)
        joined = "\n\n".join(texts)
        assert [int(p.split()[1]) for p in joined.split("\n\n")] == list(range(12))


async def test_group_message_not_addressed_gets_no_reply(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url, plugins=[("echo", responder_plugin(echo))]) as h:
        await h.send("chatter", kind="group", conversation="g", addressed=False)
        await h.send("@bot question", kind="group", conversation="g", addressed=True)
        await h.expect_reply("echo: @bot question")
        await h.idle()
        assert len(h.adapter.sent) == 1


async def test_responder_that_raises_gives_generic_error_and_is_audited(soulgate_database_url: str) -> None:
    async def boom(turn: Turn) -> TurnResult:
        raise RuntimeError("kaput")

    async with running_gateway(soulgate_database_url, plugins=[("boom", responder_plugin(boom))]) as h:
        await h.send("hi")
        assert (await h.expect_reply()).text == GENERIC_ERROR
        await h.idle()
        audit = await h.gateway.store.audit.recent(kind="plugin_error")
        assert audit[0]["plugin"] == "boom" and "kaput" in audit[0]["detail"]["error"]
        # the gateway goes on: commands still work
        assert "Commands" in await h.ask("/help")


async def test_inbound_filter_that_raises_is_skipped_and_one_that_drops_is_audited(
    soulgate_database_url: str,
) -> None:
    @hookimpl
    def soulgate_inbound(envelope: Any) -> Any:
        if envelope.text == "spam":
            return False
        raise ValueError("filter bug")

    filters = types.SimpleNamespace(soulgate_inbound=soulgate_inbound)
    plugins = [("echo", responder_plugin(echo)), ("filters", filters)]
    async with running_gateway(soulgate_database_url, plugins=plugins) as h:
        await h.send("spam")
        await h.send("ham")
        await h.expect_reply("echo: ham")
        await h.idle()
        assert len(h.adapter.sent) == 1
        dropped = await h.gateway.store.audit.recent(kind="inbound_dropped")
        errors = await h.gateway.store.audit.recent(kind="plugin_error")
        assert dropped[0]["plugin"] == "filters"
        assert errors[0]["plugin"] == "filters" and errors[0]["detail"]["hook"] == "soulgate_inbound"


async def test_builtin_commands(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url, plugins=[("echo", responder_plugin(echo))]) as h:
        help_text = await h.ask("/help")
        for name in ("/help", "/status", "/reset"):
            assert name in help_text
        assert "Unknown command `/frobnicate`" in await h.ask("/frobnicate now")
        assert "inbox:" in await h.ask("/status")
        await h.ask("remember this")
        assert "2 messages" in await h.ask("/reset")
        key = make_envelope("x", conversation="conv-1").conversation_key
        assert await h.services.history(key) == []


async def test_rate_limit_buckets_are_shared_and_space_sends(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url) as h:
        rates = h.gateway.store.rates
        waits = [await rates.reserve([("chat:1", 1.0, 1)]) for _ in range(3)]
        assert waits[0] == 0 and 0.9 < waits[1] <= 1.0 and 1.9 < waits[2] <= 2.0
        burst = [await rates.reserve([("bot:1", 1.0, 3)]) for _ in range(4)]
        assert burst[:3] == [0, 0, 0] and burst[3] > 0.9
        await rates.penalize("chat:2", 5)
        assert await rates.reserve([("chat:2", 0.1, 1)]) > 4.5


async def test_history_follows_the_envelope_an_inbound_filter_changed(soulgate_database_url: str) -> None:
    @hookimpl
    def soulgate_inbound(envelope: Any) -> Any:
        return envelope.evolve(thread="moved")  # e.g. a route that answers in a thread

    seen: list[int] = []

    async def count_history(turn: Turn) -> TurnResult:
        seen.append(len(turn.history))
        return TurnResult(replies=[Reply(text="ok")])

    plugins = [("count", responder_plugin(count_history)), ("mover", types.SimpleNamespace(soulgate_inbound=soulgate_inbound))]
    async with running_gateway(soulgate_database_url, plugins=plugins) as h:
        await h.ask("one")
        await h.ask("two")
    assert seen == [0, 2]


async def test_command_for_another_bot_is_not_answered(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url) as h:
        await h.send("/help@other_bot", kind="group", conversation="g", addressed=False)
        await h.send("/help@our_bot", kind="group", conversation="g", addressed=True)
        await h.expect_reply("Commands")
        await h.idle()
        assert len(h.adapter.sent) == 1


async def test_idle_delivery_workers_sleep_instead_of_spinning(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url) as h:
        outbox = h.gateway.store.outbox
        assert await outbox.next_due_in() is None  # empty: nothing is due (was 0, a busy loop)
        claims = 0
        original = outbox.claim

        async def counting_claim(*args: Any, **kwargs: Any) -> Any:
            nonlocal claims
            claims += 1
            return await original(*args, **kwargs)

        outbox.claim = counting_claim  # type: ignore[method-assign]
        await asyncio.sleep(1.0)
        # 4 workers waking every idle_poll_seconds (0.2 s) make ~20 claims; spinning made hundreds
        assert claims < 60, claims
