"""Postgres restarts while the gateway is under load.

A producer keeps the gateway saturated (a fixed number of messages admitted but
not yet answered), so the reply rate measures what the pipeline can do, not
what the producer offers. Midway the test crash-restarts the gateway's Postgres
(``pg_ctl stop -m immediate``, then start). Admissions fail while it is down
and the producer delivers them again, as a platform would. The gateway must
reconnect by itself, get back to at least 95% of its earlier rate within 30 s
of Postgres being back, and answer every message exactly once.

Rates are counts over windows of a couple of seconds, not timings of single
operations; the comparison is against the same gateway's own rate before the
restart, so a slow or busy machine moves both sides.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from gateway import Reply, ReplyAddress, SendResult, Turn, TurnResult, hookimpl
from gateway.testing import FakeAdapter, GatewayHarness, fresh_database, running_gateway, test_config

from . import echo_plugin

RECOVERY_DEADLINE = 30.0  # seconds after Postgres is back (the number)
RATE_SHARE = 0.95
WINDOW = 2.0  # seconds per rate sample
OUTSTANDING = 40  # messages admitted but not yet answered, kept constant by the producer
CONVERSATIONS = 16
#: longer than the outage: a row claimed just before it is finished by its own worker,
#: not re-claimed by another after its lease expired
LEASE_SECONDS = 20.0


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A Postgres of this module's own, so its tests can crash and restart it."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("faults-pg"), cleanup_mode="stop")
    try:
        yield server.get_uri(), server
    finally:
        server.cleanup()


@pytest_asyncio.fixture
async def own_postgres(own_server: tuple[str, Any]) -> AsyncIterator[tuple[str, Any]]:
    """A fresh database on that server, and the server."""
    async with fresh_database(own_server[0]) as url:
        yield url, own_server[1]


def _pg_ctl(server: Any, *args: str) -> None:
    from pgserver._commands import pg_ctl

    pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=30)


class Producer:
    """Keeps ``OUTSTANDING`` messages in the pipeline; redelivers what could not be admitted."""

    def __init__(self, h: GatewayHarness, adapter: FakeAdapter) -> None:
        self.h, self.adapter = h, adapter
        self.admitted: list[str] = []
        self.refused = 0  # admissions that failed (Postgres down) and were delivered again
        self.duplicates = 0  # redeliveries of a message whose first admission had committed
        self.stop = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            if len(self.admitted) - len(self.adapter.sent) >= OUTSTANDING:
                await asyncio.sleep(0.002)
                continue
            token = f"pg-{n:06d}"
            try:
                result = await self.h.adapter.inject(token, external_id=token,
                                                     conversation=f"conv-{n % CONVERSATIONS}")
            except Exception:
                self.refused += 1
                await asyncio.sleep(0.05)  # the "platform" tries again with the same event
                continue
            self.duplicates += not result.created
            self.admitted.append(token)
            n += 1


class Meter:
    """Samples the number of delivered replies; rates are counts over windows."""

    def __init__(self, adapter: FakeAdapter) -> None:
        self.adapter = adapter
        self.samples: list[tuple[float, int]] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.samples.append((loop.time(), len(self.adapter.sent)))
            await asyncio.sleep(0.25)

    def rate(self, start: float, end: float) -> float:
        inside = [(t, n) for t, n in self.samples if start <= t <= end]
        if len(inside) < 2:
            return 0.0
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def windows(self, start: float, end: float) -> list[tuple[float, float]]:
        """(window start, rate) for consecutive windows in [start, end]."""
        out, t = [], start
        while t + WINDOW <= end:
            out.append((t, self.rate(t, t + WINDOW)))
            t += WINDOW / 2  # overlapping windows: a recovery is not missed between two
        return out


async def test_postgres_restart_mid_load_recovers_and_loses_nothing(own_postgres: tuple[str, Any]) -> None:
    url, server = own_postgres
    adapter = FakeAdapter(delivery_policy="never_lost")
    config = test_config({
        "workers": {"lease_seconds": LEASE_SECONDS, "idle_poll_seconds": 0.2},
        "delivery": {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5},
    })
    async with running_gateway(url, config=config, adapter=adapter,
                               plugins=[("echo", echo_plugin)]) as h:
        loop = asyncio.get_running_loop()
        producer, meter = Producer(h, adapter), Meter(adapter)
        tasks = [asyncio.create_task(producer.run()), asyncio.create_task(meter.run())]
        try:
            await asyncio.sleep(2.0)  # warm up
            before_start = loop.time()
            await asyncio.sleep(8.0)
            before_end = loop.time()
            baseline = statistics.median(r for _, r in meter.windows(before_start, before_end))
            assert baseline > 5, f"the gateway hardly moves before the restart ({baseline:.1f}/s)"

            await asyncio.to_thread(_pg_ctl, server, "-w", "stop", "-m", "immediate")
            down_at = loop.time()
            await asyncio.sleep(1.0)  # the gateway notices: admissions fail, workers back off
            await asyncio.to_thread(server.ensure_postgres_running)
            up_at = loop.time()

            recovered_at = None
            while loop.time() < up_at + RECOVERY_DEADLINE + WINDOW:
                await asyncio.sleep(0.5)
                for start, rate in meter.windows(up_at, loop.time()):
                    if rate >= RATE_SHARE * baseline:
                        recovered_at = start + WINDOW
                        break
                if recovered_at is not None:
                    break
            after = meter.windows(up_at, loop.time())
            assert recovered_at is not None and recovered_at - up_at <= RECOVERY_DEADLINE, (
                f"rate before: {baseline:.1f}/s; after Postgres came back: "
                + ", ".join(f"{r:.1f}" for _, r in after))
            await asyncio.sleep(2.0)  # some more load after the recovery
        finally:
            producer.stop.set()  # it finishes the admission under way (a cancel could lose count of it)
            await asyncio.wait_for(tasks[0], 30)
            tasks[1].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        await h.idle(timeout=60)
        replies = Counter(m.text.removeprefix("echo: ") for m in adapter.sent)
        lost = [t for t in producer.admitted if replies[t] == 0]
        doubled = {t: n for t, n in replies.items() if n > 1}
        strangers = set(replies) - set(producer.admitted)
        assert not lost and not doubled and not strangers, (lost[:10], doubled, strangers)
        assert producer.refused > 0, "Postgres was down but no admission failed: the test tested nothing"
        counts = await h.gateway.store.outbox.counts()
        assert counts == {"pending": 0, "sending": 0, "dead": 0, "unknown": 0}, counts
        print(f"\nPostgres restart: {len(producer.admitted)} messages, baseline {baseline:.1f}/s, "
              f"down {up_at - down_at:.1f}s, back to {RATE_SHARE:.0%} after {recovered_at - up_at:.1f}s, "
              f"{producer.refused} refused admissions redelivered ({producer.duplicates} already stored)")


# -- the outage at the worst moment, on purpose --------------------------------------------------
# Each of these cuts Postgres at a moment where the gateway knows something the database does
# not know yet, and brings it back a second later. The lease (5 s in the test config) is longer
# than the outage, so the gateway must record what it knows instead of leaving the row to the
# crash rule (re-run the turn; treat the send as "maybe sent").


class Outage:
    """Crash Postgres now; start it again after ``seconds`` in the background."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.back = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def cut(self, seconds: float = 1.0) -> None:
        _pg_ctl(self.server, "-w", "stop", "-m", "immediate")  # blocks the loop briefly: on purpose

        async def restart() -> None:
            await asyncio.sleep(seconds)
            await asyncio.to_thread(self.server.ensure_postgres_running)
            self.back.set()

        self.task = asyncio.create_task(restart())

    async def over(self, h: GatewayHarness) -> None:
        await asyncio.wait_for(self.back.wait(), 60)
        await h.idle(timeout=30)
        await asyncio.sleep(6.0)  # past the lease: a row the gateway forgot would be taken up again
        await h.idle(timeout=30)


class CutAfterSend(FakeAdapter):
    """The platform accepted the message, then the database went away before mark_sent."""

    def __init__(self, outage: Outage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outage = outage

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        result = await super().send(address, reply)
        if self.outage.task is None:
            self.outage.cut()
        return result


class CutBeforeSend(FakeAdapter):
    """The database goes away between the claim and the send (the rate-limit reservation)."""

    def __init__(self, outage: Outage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outage = outage

    def rate_limits(self, address: ReplyAddress) -> list[Any]:
        if self.outage.task is None:
            self.outage.cut()
        return []


async def outbox_statuses(h: GatewayHarness) -> list[str]:
    rows = await h.gateway.store.db.fetch("SELECT status FROM outbox ORDER BY id")
    return [r["status"] for r in rows]


async def test_a_send_is_recorded_when_postgres_was_down_right_after_it(own_postgres: tuple[str, Any]) -> None:
    url, server = own_postgres
    outage = Outage(server)
    adapter = CutAfterSend(outage, delivery_policy="never_lost")
    async with running_gateway(url, adapter=adapter, plugins=[("echo", echo_plugin)]) as h:
        await h.send("hello")
        await outage.over(h)
        # Not sent again after the lease (a never_twice channel would park it as "maybe sent").
        assert [m.text for m in adapter.sent] == ["echo: hello"]
        assert await outbox_statuses(h) == ["sent"]


async def test_a_row_claimed_but_not_sent_goes_back_when_postgres_was_down(
    own_postgres: tuple[str, Any]
) -> None:
    url, server = own_postgres
    outage = Outage(server)
    adapter = CutBeforeSend(outage, delivery_policy="never_twice")
    async with running_gateway(url, adapter=adapter, plugins=[("echo", echo_plugin)]) as h:
        await h.send("hello")
        await outage.over(h)
        # Nothing had left: it is sent once the database is back, not parked as "maybe sent".
        assert [m.text for m in adapter.sent] == ["echo: hello"]
        assert await outbox_statuses(h) == ["sent"]


async def test_a_finished_turn_is_committed_when_postgres_was_down_at_the_end(
    own_postgres: tuple[str, Any]
) -> None:
    url, server = own_postgres
    outage = Outage(server)
    turns: list[str] = []

    class CutAtTheEnd:
        async def respond(self, turn: Turn) -> TurnResult:
            turns.append(turn.envelope.text)
            if outage.task is None:
                outage.cut()
            return TurnResult(replies=[Reply(text=f"answer to {turn.envelope.text}")])

    @hookimpl
    def soulgate_responder(services: Any) -> CutAtTheEnd:
        return CutAtTheEnd()

    plugin = type("Plugin", (), {"soulgate_responder": staticmethod(soulgate_responder)})
    async with running_gateway(url, plugins=[("cut", plugin)]) as h:
        await h.send("hello")
        await outage.over(h)
        assert turns == ["hello"]  # the turn ran once: no second LLM call after the outage
        assert [m.text for m in h.adapter.sent] == ["answer to hello"]
