"""Delivery: claim outbox rows, book their shared rate buckets (waiting inline only briefly),
send, settle buckets after a late send, retry or dead-letter."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from storage import OutboxItem, connection_trouble

from .adapter import Adapter, RateLimit, SendResult
from .claims import Claimer
from .errors import OutcomeUnknown, PermanentDeliveryError, RetryAfter
from .pacing import Pacer
from .persist import persist

if TYPE_CHECKING:
    from .runtime import Gateway

__all__ = ["Deliverer"]

log = logging.getLogger("soulgate.delivery")
#: a rate-limit wait longer than this books nothing and gives the row back instead of holding
#: a worker (short: a shared bucket may keep up to ``Pacer.cap`` workers waiting this long)
MAX_INLINE_WAIT = 0.25
#: a row given back for its rate limit is due this long before its buckets conform, so the
#: worker that claims it again books the slot with a short inline wait and sends on time
GIVE_BACK_LEAD = 0.15
#: a send that left later than its slot by more than this moves its buckets (``settle``)
LATE = 0.01
#: a send call that took longer than this counts as having left when it returned (see ``_post``)
SLOW_SEND = 0.05
#: a send that wakes more than this many intervals of a bucket after its slot books that bucket
#: again (its slot is gone; two intervals: a limit with ~5% margin absorbs two sends bunched)
REBOOK_AFTER = 2.0
#: bookings of one send when the loop keeps waking too late for the slot
_REBOOKINGS = 3


class Deliverer:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        # at most half the workers (and at least two) wait on one shared bucket at a time
        self.pacer = Pacer(cap=max(2, gateway.config.workers.delivery // 2),
                           on_reopen=gateway.wakeups.outbox.set)

    async def worker(self, name: str) -> None:
        wake = self.gw.wakeups.outbox
        idle = self.gw.config.workers.idle_poll_seconds
        lease = self.gw.config.workers.lease_seconds
        outbox = self.gw.store.outbox
        claimer: Claimer[OutboxItem] = Claimer(lambda token: outbox.reclaim(token, lease))
        while not self.gw.stopping.is_set():
            wake.clear()
            skip = self.pacer.skipped()
            try:
                item = await claimer.claim(partial(outbox.claim, lease, self.gw.delivery_channels(), skip))
            except Exception as exc:
                self.gw.note_db_trouble(exc)
                await asyncio.sleep(min(idle, 1.0))
                continue
            if item is None:
                try:
                    due = await self.gw.store.outbox.next_due_in(skip)
                except Exception:
                    due = None
                reopens = self.pacer.reopens_in()
                timeout = min(t for t in (idle, due, reopens) if t is not None)
                timeout = max(0.01, timeout)
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
                continue
            wake.set()  # there may be more: let one more idle worker look (see WakeOne)
            self.gw.inflight += 1
            try:
                await self.deliver(item)
            except asyncio.CancelledError:
                raise  # left 'sending'; its lease expires and the crash rule applies
            except Exception as exc:  # database trouble while recording the outcome
                self.gw.note_db_trouble(exc)
                log.exception("could not record the outcome of outbox row %s", item.id)
            finally:
                self.gw.inflight -= 1

    def _backoff(self, attempts: int) -> float:
        cfg = self.gw.config.delivery
        delay = min(cfg.backoff_max_seconds, cfg.backoff_base_seconds * 2 ** max(0, attempts - 1))
        return delay * random.uniform(0.8, 1.2)  # jitter: instances do not retry in lockstep

    async def _record(self, write: Callable[[], Awaitable[object]]) -> None:
        """Record an outcome this worker knows, through a short database outage: a row left
        'sending' would be taken for "maybe sent" once its lease expires."""
        await persist(write, within=self.gw.config.workers.lease_seconds, on_trouble=self.gw.note_db_trouble)

    async def _bury(self, item: OutboxItem, error: str, status: str = "dead") -> None:
        log.warning("outbox row %s %s: %s", item.id, "dead-lettered" if status == "dead" else status, error)
        await self._record(lambda: self.gw.store.outbox.bury(item, error, status=status))
        self.gw.metrics.dead_letters.labels(item.address.channel).inc()
        await self.gw.store.audit.write(
            "delivery_dead" if status == "dead" else "delivery_unknown",
            {"outbox_id": item.id, "channel": item.address.channel, "error": error,
             "attempts": item.attempts},
            inbox_id=item.inbox_id,
        )

    async def deliver(self, item: OutboxItem) -> None:
        channel = item.address.channel
        adapter = self.gw.adapters.get((channel, item.address.account))
        if datetime.now(UTC) > item.expires_at:
            await self._bury(item, "expired before it could be delivered")
            return
        if adapter is None:
            msg = f"no adapter for {channel}/{item.address.account} in this instance"
            if item.attempts >= self.gw.config.delivery.max_attempts:
                await self._bury(item, msg)
            else:
                await self.gw.store.outbox.retry_later(item, self._backoff(item.attempts), msg)
            return
        if item.was_sending and adapter.delivery_policy == "never_twice":
            # A worker died while this send was in flight: it may have been posted.
            await self._bury(item, "a send was interrupted; not repeated (never_twice)", "unknown")
            return
        limits = adapter.rate_limits(item.address)
        route = (channel, item.address.account)
        # held while booking and waiting for the slot, not while sending: the next send on a
        # shared bucket is booked meanwhile, so the bucket's slots are not missed
        with self.pacer.holding([r.key for r in limits], route, item.destination):
            slot = await self._book(item, limits, route)
        if slot is None:
            return  # given back until its buckets conform
        await self._send(item, adapter, limits, slot)

    async def _book(self, item: OutboxItem, limits: list[RateLimit], route: tuple[str, str]) -> float | None:
        """Book the send on its buckets and sleep until its slot; returns the (first) slot in
        loop time, or None after giving the row back (too far off, or the database failed).

        A worker waits inline only up to ``MAX_INLINE_WAIT``: a longer wait books nothing
        and the row goes back, due shortly before its buckets conform, so a queue behind one
        slow bucket holds no worker. Waking later than the slot by more than ``REBOOK_AFTER``
        of a bucket's intervals (a stalled loop), the sends booked after ours may already have
        left: the send then books that bucket afresh rather than go out bunched with them.
        """
        if not limits:
            return asyncio.get_running_loop().time()
        loop = asyncio.get_running_loop()
        keys = [r.key for r in limits]
        known = self.pacer.blocked_for(keys, route, item.destination)
        if known is not None:  # another row just learned this bucket is booked far ahead
            await self._give_back(item, known + MAX_INLINE_WAIT, "waiting for rate limit")
            return None
        wanted, first = limits, None
        for _ in range(_REBOOKINGS):
            try:
                res = await self.gw.store.rates.try_reserve(
                    [(r.key, r.interval, r.burst) for r in wanted], MAX_INLINE_WAIT)
            except Exception as exc:  # nothing was sent: give the row back, never leave it 'sending'
                log.warning("rate-limit booking for outbox row %s failed: %s", item.id, exc)
                if connection_trouble(exc):
                    self.gw.note_db_trouble(exc)
                await self._give_back(item, 0.5, f"database trouble before sending: {exc}")
                return None
            if not res.granted:
                self.pacer.refused(res.blocking, route, item.destination, res.wait - MAX_INLINE_WAIT)
                await self._give_back(item, res.wait, "waiting for rate limit")
                return None
            slot = loop.time() + res.wait
            first = slot if first is None else first
            if res.wait > 0:
                await asyncio.sleep(res.wait)
            late = loop.time() - slot
            wanted = [r for r in limits if late > REBOOK_AFTER * r.interval]
            if not wanted:
                return first
        await self._give_back(item, 0.0, "the event loop kept missing the rate-limit slot")
        return None

    async def _give_back(self, item: OutboxItem, conforms_in: float, why: str) -> None:
        """Back to pending without counting an attempt, due a little before it conforms."""
        delay = max(0.0, conforms_in - GIVE_BACK_LEAD)
        await self._record(lambda: self.gw.store.outbox.retry_later(item, delay, why, count=False))

    async def _post(self, item: OutboxItem, adapter: Adapter, limits: list[RateLimit], slot: float) -> SendResult:
        """``adapter.send``; when it left later than its slot, the buckets are then settled —
        before the outcome is recorded, which is what lets the destination's next row go.

        When it left is noted just before the call. A call that took longer than
        ``SLOW_SEND`` may have been stalled before its request went out (a busy loop), so
        its departure is then taken to be when it returned: the latest it can have been.
        """
        loop = asyncio.get_running_loop()
        left = loop.time()
        try:
            return await adapter.send(item.address, item.reply)
        finally:
            done = loop.time()
            departed = done if done - left > SLOW_SEND else left
            if limits and departed - slot > LATE:
                try:
                    await self.gw.store.rates.settle([(r.key, r.interval) for r in limits], done - departed)
                except Exception as exc:  # the send is done; a lost settle costs at most a 429
                    log.warning("could not settle rate buckets %s: %s", [r.key for r in limits], exc)

    async def _send(self, item: OutboxItem, adapter: Adapter, limits: list[RateLimit], slot: float) -> None:
        channel = item.address.channel
        max_attempts = adapter.max_attempts or self.gw.config.delivery.max_attempts
        try:
            result = await self._post(item, adapter, limits, slot)
        except RetryAfter as exc:
            self.gw.metrics.delivery_failures.labels(channel, "rate_limited").inc()
            seconds, why = exc.seconds, str(exc)
            if limits:
                await self._record(lambda: self.gw.store.rates.penalize(limits[0].key, seconds))
            await self._record(lambda: self.gw.store.outbox.retry_later(item, seconds, why, count=False))
            return
        except PermanentDeliveryError as exc:
            self.gw.metrics.delivery_failures.labels(channel, "permanent").inc()
            await self._bury(item, f"{type(exc).__name__}: {exc}")
            return
        except OutcomeUnknown as exc:
            self.gw.metrics.delivery_failures.labels(channel, "unknown").inc()
            if adapter.delivery_policy == "never_twice":
                await self._bury(item, f"outcome unknown: {exc}", "unknown")
            elif item.attempts >= max_attempts:
                await self._bury(item, f"outcome unknown: {exc}")
            else:
                why = str(exc)
                await self._record(lambda: self.gw.store.outbox.retry_later(
                    item, self._backoff(item.attempts), why))
            return
        except Exception as exc:  # transient by default: the platform or the network
            self.gw.metrics.delivery_failures.labels(channel, "transient").inc()
            error = f"{type(exc).__name__}: {exc}"
            if item.attempts >= max_attempts:
                await self._bury(item, f"gave up after {item.attempts} attempts: {error}")
            else:
                log.info("send of outbox row %s failed (%s); retrying", item.id, error)
                await self._record(lambda: self.gw.store.outbox.retry_later(
                    item, self._backoff(item.attempts), error))
            return
        await self._record(lambda: self.gw.store.outbox.mark_sent(
            item, result.platform_message_id if result else None))
        self.gw.metrics.delivered.labels(channel).inc()
