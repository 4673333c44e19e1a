"""``AdapterContext.run_as_leader``: two gateways on one real Postgres compete for one poller.

Each gateway hands its adapter a real context; the bodies are small coroutines
that note when they run. Takeover is checked both ways the lock can pass: the
leader's body ends, and the leader's lock connection dies (terminated in
Postgres, as a crashed machine or a network cut would).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import pytest

from gateway.context import AdapterContextImpl
from gateway.testing import running_gateway

pytestmark = pytest.mark.asyncio
# advisory locks of this test's database only (the Postgres server may hold other databases)
ADVISORY = ("FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


@dataclass
class Body:
    """A poller body: records its runs; ``finish`` ends it, ``fail_with`` makes the next run raise."""

    name: str
    runs: int = 0
    cancelled: int = 0
    running: asyncio.Event = field(default_factory=asyncio.Event)
    finish: asyncio.Event = field(default_factory=asyncio.Event)
    fail_with: list[Exception] = field(default_factory=list)
    log: list[str] | None = None

    async def __call__(self) -> None:
        self.runs += 1
        if self.log is not None:
            self.log.append(f"{self.name} starts")
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.running.set()
        try:
            await self.finish.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running.clear()
            if self.log is not None:
                self.log.append(f"{self.name} ends")


@asynccontextmanager
async def contexts(db: str, n: int) -> AsyncIterator[list[AdapterContextImpl]]:
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            h = await stack.enter_async_context(running_gateway(db))
            out.append(AdapterContextImpl(h.gateway, h.adapter))
        yield out


async def until(probe: Callable[[], bool]) -> None:
    async with asyncio.timeout(15):  # a deadline, so a broken test fails instead of hanging
        while not probe():  # noqa: ASYNC110 - polls a counter the body bumps
            await asyncio.sleep(0.02)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_other_instance_takes_over_when_the_leaders_body_ends(soulgate_database_url: str) -> None:
    order: list[str] = []
    a, b = Body("a", log=order), Body("b", log=order)
    async with contexts(soulgate_database_url, 2) as (ctx_a, ctx_b):
        run_a = asyncio.create_task(ctx_a.run_as_leader("poller:x", a))
        await asyncio.wait_for(a.running.wait(), 15)
        run_b = asyncio.create_task(ctx_b.run_as_leader("poller:x", b))
        await asyncio.sleep(0.5)
        assert b.runs == 0  # one leader at a time
        assert ctx_a.leads("poller:x") and not ctx_b.leads("poller:x") and not ctx_a.leads("poller:other")

        a.finish.set()
        await asyncio.wait_for(run_a, 5)  # the body is done: run_as_leader returns, the lock is free
        await asyncio.wait_for(b.running.wait(), 15)
        assert order == ["a starts", "a ends", "b starts"]
        assert ctx_b.leads("poller:x") and not ctx_a.leads("poller:x")
        await stop(run_b)
        assert b.cancelled == 1 and a.runs == 1
        assert not ctx_b.leads("poller:x")  # stopped: no longer leading


async def test_a_leader_whose_lock_connection_dies_is_cancelled_and_stands_by(
    soulgate_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Body("a"), Body("b")
    async with contexts(soulgate_database_url, 2) as (ctx_a, ctx_b):
        run_a = asyncio.create_task(ctx_a.run_as_leader("poller:y", a, backoff=0.1, max_backoff=0.2))
        await asyncio.wait_for(a.running.wait(), 15)
        run_b = asyncio.create_task(ctx_b.run_as_leader("poller:y", b, backoff=0.1, max_backoff=0.2))

        db = ctx_a.services.store.db
        [holder] = await db.fetch(f"SELECT pid {ADVISORY}")
        with caplog.at_level(logging.WARNING):
            await db.fetch("SELECT pg_terminate_backend($1)", holder["pid"])
            await asyncio.wait_for(b.running.wait(), 15)  # the lock died with the connection: b leads
            await until(lambda: a.cancelled == 1)  # a's watcher noticed and cancelled a's body
        assert any("lost leadership of poller:y" in r.getMessage() for r in caplog.records)
        assert not run_a.done()  # a stands by to lead again
        assert not a.running.is_set() and b.runs == 1
        assert not ctx_a.leads("poller:y") and ctx_b.leads("poller:y")  # a's status follows the lock

        await stop(run_b)  # b stops: its lock is released, a takes over again
        await asyncio.wait_for(a.running.wait(), 15)
        assert a.runs == 2
        await stop(run_a)


async def test_a_failing_body_is_reported_and_restarted(soulgate_database_url: str) -> None:
    seen: list[str] = []
    body = Body("a", fail_with=[RuntimeError("imap down"), ValueError("bad state")])
    async with contexts(soulgate_database_url, 1) as (ctx,):
        run = asyncio.create_task(ctx.run_as_leader("poller:z", body, on_error=lambda e: seen.append(repr(e)),
                                                    backoff=0.05, max_backoff=0.1))
        await asyncio.wait_for(body.running.wait(), 15)
        assert seen == ["RuntimeError('imap down')", "ValueError('bad state')"] and body.runs == 3
        body.finish.set()
        await asyncio.wait_for(run, 5)


async def test_a_failing_error_handler_is_logged_not_fatal(
    soulgate_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(exc: Exception) -> None:
        raise KeyError("handler bug")

    body = Body("a", fail_with=[RuntimeError("first")])
    async with contexts(soulgate_database_url, 1) as (ctx,):
        with caplog.at_level(logging.ERROR):
            run = asyncio.create_task(ctx.run_as_leader("poller:w", body, on_error=broken, backoff=0.05))
            await asyncio.wait_for(body.running.wait(), 15)
        assert any("error handler of leader poller:w failed" in r.getMessage() for r in caplog.records)
        await stop(run)


async def test_without_a_handler_errors_are_logged(
    soulgate_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = Body("a", fail_with=[RuntimeError("boom")])
    async with contexts(soulgate_database_url, 1) as (ctx,):
        with caplog.at_level(logging.ERROR):
            run = asyncio.create_task(ctx.run_as_leader("poller:v", body, backoff=0.05))
            await asyncio.wait_for(body.running.wait(), 15)
        assert any("leader poller:v failed (RuntimeError: boom)" in r.getMessage() for r in caplog.records)
        await stop(run)


async def test_bad_arguments_are_refused_before_anything_runs(soulgate_database_url: str) -> None:
    body = Body("a")
    async with contexts(soulgate_database_url, 1) as (ctx,):
        for kwargs, message in [
            ({"name": ""}, "non-empty leadership name"),
            ({"name": "  "}, "non-empty leadership name"),
            ({"name": "p", "backoff": 0.0}, "0 < backoff <= max_backoff"),
            ({"name": "p", "backoff": 5.0, "max_backoff": 1.0}, "0 < backoff <= max_backoff"),
        ]:
            with pytest.raises(ValueError, match=message):
                await ctx.run_as_leader(body=body, **kwargs)  # type: ignore[arg-type]
        assert body.runs == 0
        locks = await ctx.services.store.db.fetch(f"SELECT 1 {ADVISORY}")
        assert locks == []  # nothing was acquired


async def test_a_stopping_gateway_ends_the_wait_between_attempts(soulgate_database_url: str) -> None:
    body = Body("a", fail_with=[RuntimeError("once")])
    async with running_gateway(soulgate_database_url) as h:
        ctx = AdapterContextImpl(h.gateway, h.adapter)
        run = asyncio.create_task(ctx.run_as_leader("poller:u", body, on_error=lambda e: None,
                                                    backoff=30.0, max_backoff=30.0))
        await until(lambda: body.runs == 1)
        await asyncio.sleep(0.1)  # now in the 30 s pause after the failure
        h.gateway.stopping.set()
        await asyncio.wait_for(run, 5)  # returns at once, without running the body again
        assert body.runs == 1
