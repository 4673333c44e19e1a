"""Delivery: claim outbox rows, respect shared rate limits, send, retry or dead-letter."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from storage import OutboxItem, connection_trouble

from .errors import OutcomeUnknown, PermanentDeliveryError, RetryAfter
from .persist import persist

if TYPE_CHECKING:
    from .runtime import Gateway

__all__ = ["Deliverer"]

log = logging.getLogger("soulgate.delivery")
#: a rate-limit wait longer than this gives the row back instead of holding a worker
MAX_INLINE_WAIT = 5.0


class Deliverer:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def worker(self, name: str) -> None:
        wake = self.gw.wakeups.outbox
        idle = self.gw.config.workers.idle_poll_seconds
        lease = self.gw.config.workers.lease_seconds
        while not self.gw.stopping.is_set():
            wake.clear()
            try:
                item = await self.gw.store.outbox.claim(lease, self.gw.delivery_channels())
            except Exception as exc:
                self.gw.note_db_trouble(exc)
                await asyncio.sleep(min(idle, 1.0))
                continue
            if item is None:
                try:
                    due = await self.gw.store.outbox.next_due_in()
                except Exception:
                    due = None
                timeout = idle if due is None else max(0.01, min(idle, due))
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
                continue
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
        try:
            wait = await self.gw.store.rates.reserve([(r.key, r.interval, r.burst) for r in limits])
        except Exception as exc:
            if not connection_trouble(exc):
                raise
            # Nothing was sent: give the row back rather than leave it to look "maybe sent".
            trouble = f"database trouble before sending: {exc}"
            await self._record(lambda: self.gw.store.outbox.retry_later(item, 0.5, trouble, count=False))
            return
        if wait > MAX_INLINE_WAIT:
            await self.gw.store.outbox.retry_later(item, wait, "waiting for rate limit", count=False)
            return
        if wait > 0:
            await asyncio.sleep(wait)
        max_attempts = adapter.max_attempts or self.gw.config.delivery.max_attempts
        try:
            result = await adapter.send(item.address, item.reply)
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
