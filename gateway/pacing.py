"""What one instance's delivery workers know about the rate buckets they are waiting on.

The buckets themselves live in Postgres (storage/ratelimit.py). This is the
local part that keeps a long queue behind one bucket from taking every worker
or making them spin:

- a bucket *shared* by several destinations (a Telegram bot's 30/s, seen by
  rows of two destinations) may be held by at most ``cap`` of this instance's
  workers at once; while it is full, or while it is booked too far ahead to
  wait inline, its account ``(channel, account)`` is left out of claims, so
  the other workers serve other destinations instead of claiming the
  broadcast's next row only to give it back;
- a bucket of one destination never needs this: the outbox hands out the
  rows of a destination one at a time, in order.

Nothing here is needed for correctness — a send goes only with a booking in
Postgres — only for fairness and to save round trips. Each instance learns on
its own; what it learns expires with the bucket's wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["Pacer"]


@dataclass
class _Bucket:
    route: tuple[str, str]  # (channel, account) whose rows use it
    destinations: set[str] = field(default_factory=set)  # up to two: two means shared
    holders: int = 0  # this instance's workers with a booking on it, until their send is done
    blocked_until: float = 0.0  # monotonic: before then a booking would wait too long

    @property
    def shared(self) -> bool:
        return len(self.destinations) > 1


class Pacer:
    def __init__(self, cap: int, clock: Callable[[], float] = time.monotonic,
                 on_reopen: Callable[[], None] | None = None) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self._clock = clock
        #: called when a full shared bucket gets room again: idle workers left its rows alone
        #: and sleep, so one should come and book its next slot now
        self._on_reopen = on_reopen
        self._buckets: dict[str, _Bucket] = {}

    def _seen(self, key: str, route: tuple[str, str], destination: str) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(route)
        if len(b.destinations) < 2:
            b.destinations.add(destination)
        return b

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if not b.holders and b.blocked_until <= now]:
            del self._buckets[key]

    def skipped(self) -> list[tuple[str, str]]:
        """Accounts whose rows claims should leave alone for now."""
        now = self._clock()
        self._prune(now)
        return sorted({b.route for b in self._buckets.values()
                       if b.shared and (b.holders >= self.cap or b.blocked_until > now)})

    def reopens_in(self) -> float | None:
        """Seconds until the earliest time-bound skip ends (None: none)."""
        now = self._clock()
        ends = [b.blocked_until - now for b in self._buckets.values() if b.shared and b.blocked_until > now]
        return min(ends) if ends else None

    def blocked_for(self, keys: list[str], route: tuple[str, str], destination: str) -> float | None:
        """Seconds this send must still wait on a bucket known to be booked too far ahead,
        without asking Postgres (None: ask). Notes the destination, so a bucket blocking two
        destinations is known to be shared from then on."""
        now, out = self._clock(), None
        for key in keys:
            b = self._buckets.get(key)
            if b is not None and b.blocked_until > now:
                self._seen(key, route, destination)
                out = max(out or 0.0, b.blocked_until - now)
        return out

    def refused(self, keys: tuple[str, ...], route: tuple[str, str], destination: str, for_seconds: float) -> None:
        """Postgres refused a booking: ``keys`` stay booked too far ahead for ``for_seconds``."""
        until = self._clock() + max(0.0, for_seconds)
        for key in keys:
            b = self._seen(key, route, destination)
            b.blocked_until = max(b.blocked_until, until)

    @contextmanager
    def holding(self, keys: list[str], route: tuple[str, str], destination: str) -> Iterator[None]:
        """A worker holds a booking on ``keys`` (sleeping towards its slot, then sending)."""
        held = [self._seen(key, route, destination) for key in keys]
        for b in held:
            b.holders += 1
        try:
            yield
        finally:
            reopened = False
            for b in held:
                b.holders -= 1
                reopened |= b.shared and b.holders == self.cap - 1
            if reopened and self._on_reopen is not None:
                self._on_reopen()
