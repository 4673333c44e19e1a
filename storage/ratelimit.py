"""Outbound rate limits shared by every gateway instance (GCRA buckets in Postgres).

Each bucket keeps a theoretical arrival time (TAT): the earliest time the next
send conforms, a burst of ``b`` being a tolerance of ``(b - 1)`` intervals. A
send usually needs several buckets (a chat and its bot); it goes when the
slowest one conforms, and every bucket is charged for that moment, not for its
own earlier conforming time (a bot bucket charged for "now" while the send
waits a second for its chat would leave a hole another chat's send could use,
and both would then reach the platform together).

``try_reserve`` books a send only when it conforms within ``max_wait``;
otherwise it leaves every bucket as it was and says when the send would
conform, so the caller gives the work back instead of sleeping on it or
burning a slot nobody uses. The buckets of one send are locked in key order
(no deadlock between instances), decided on and written in one statement: a
reservation that waited for another instance's lock decides on the TAT that
instance wrote, so GCRA holds for the whole cluster.

``settle`` repairs the buckets after a send left later than its slot: the next
send is spaced from the real departure, not from the slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .database import Database

__all__ = ["RateLimiter", "Reservation"]

#: a bucket another instance creates between our lock and our insert (only ever the first
#: use of a key) makes the reservation incomplete; it is then asked again this many times
_CONTENDED_RETRIES = 3

# $1 keys, $2 intervals, $3 bursts, $4 max wait (seconds). "held": the existing buckets,
# locked in key order (FOR UPDATE returns the newest version once a concurrent holder
# commits). "slot": when the slowest bucket conforms. Buckets are written only when that
# is within $4; a new bucket is inserted with DO NOTHING, so one created concurrently is
# never overwritten — the reservation reports itself incomplete and is asked again.
_RESERVE = """
WITH want AS (
    SELECT w.key, w.iv, w.b FROM unnest($1::text[], $2::float8[], $3::int[]) AS w(key, iv, b)
), held AS (
    SELECT r.key, r.tat FROM rate_buckets r WHERE r.key = ANY($1::text[]) ORDER BY r.key FOR UPDATE
), clock AS (
    -- read after every lock is held (the aggregate consumes "held" first)
    SELECT clock_timestamp() AS now, count(*) AS n FROM held
), slot AS (
    SELECT c.now, greatest(max(h.tat - make_interval(secs => w.iv * (w.b - 1))), c.now) AS at,
           coalesce(array_agg(w.key) FILTER (WHERE h.tat - make_interval(secs => w.iv * (w.b - 1))
                                             > c.now + make_interval(secs => $4)), '{}') AS blocking
    FROM clock c LEFT JOIN (want w JOIN held h USING (key)) ON true
    GROUP BY c.now
), go AS (
    SELECT s.at, s.now, s.blocking, s.at <= s.now + make_interval(secs => $4) AS ok FROM slot s
), upd AS (
    UPDATE rate_buckets r SET tat = greatest(h.tat, g.at) + make_interval(secs => w.iv)
    FROM held h JOIN want w USING (key), go g
    WHERE g.ok AND r.key = h.key
    RETURNING r.key
), ins AS (
    INSERT INTO rate_buckets (key, tat)
    SELECT w.key, g.at + make_interval(secs => w.iv) FROM want w, go g
    WHERE g.ok AND NOT EXISTS (SELECT 1 FROM held h WHERE h.key = w.key) ORDER BY w.key
    ON CONFLICT (key) DO NOTHING
    RETURNING key
)
SELECT extract(epoch FROM g.at - g.now)::float8 AS wait, g.ok, g.blocking,
       (SELECT count(*) FROM upd) + (SELECT count(*) FROM ins) AS written
FROM go g
"""

# $1 keys, $2 intervals, $3 seconds since the send left (measured by the caller's clock, so
# the two clocks need not agree). Locks in key order like a reservation.
_SETTLE = """
WITH want AS (
    SELECT w.key, w.iv FROM unnest($1::text[], $2::float8[]) AS w(key, iv)
), held AS (
    SELECT r.key FROM rate_buckets r WHERE r.key = ANY($1::text[]) ORDER BY r.key FOR UPDATE
)
UPDATE rate_buckets r
SET tat = greatest(r.tat, clock_timestamp() - make_interval(secs => $3) + make_interval(secs => w.iv))
FROM held h JOIN want w USING (key)
WHERE r.key = h.key
"""


@dataclass(frozen=True, slots=True)
class Reservation:
    """``granted``: the send is booked and may go in ``wait`` seconds. Otherwise nothing
    was booked and the send would conform in ``wait`` seconds (a lower bound: others may
    book the bucket meanwhile)."""

    granted: bool
    wait: float
    #: when not granted: the keys that do not conform within the wait asked for
    blocking: tuple[str, ...] = ()


Limits = list[tuple[str, float, int]]


def _checked(limits: Limits) -> tuple[list[str], list[float], list[int]]:
    """Keys, intervals and bursts, one entry per key (the first wins); a bad limit raises."""
    keys: list[str] = []
    intervals: list[float] = []
    bursts: list[int] = []
    for key, interval, burst in limits:
        if not isinstance(key, str) or not key:
            raise ValueError(f"a rate-limit key must be a non-empty string, not {key!r}")
        if not (isinstance(interval, int | float) and math.isfinite(interval) and interval > 0):
            raise ValueError(f"rate limit {key!r}: interval must be a positive number of seconds, not {interval!r}")
        if not isinstance(burst, int) or burst < 1:
            raise ValueError(f"rate limit {key!r}: burst must be an integer >= 1, not {burst!r}")
        if key not in keys:
            keys.append(key)
            intervals.append(float(interval))
            bursts.append(burst)
    return keys, intervals, bursts


class RateLimiter:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def try_reserve(self, limits: Limits, max_wait: float) -> Reservation:
        """Book one send on every ``(key, interval, burst)`` if it conforms within
        ``max_wait`` seconds; otherwise change nothing and say when it would."""
        if max_wait < 0 or math.isnan(max_wait):
            raise ValueError(f"max_wait must be >= 0, not {max_wait!r}")
        keys, intervals, bursts = _checked(limits)
        if not keys:
            return Reservation(True, 0.0)
        bound = min(max_wait, 10 * 365 * 86400.0)  # make_interval wants a finite number
        for _ in range(_CONTENDED_RETRIES):
            async with self.db.pool.acquire() as conn:
                row = await conn.fetchrow(_RESERVE, keys, intervals, bursts, bound)
            assert row is not None  # "go" always has its one row
            wait = max(0.0, float(row["wait"]))
            if not row["ok"]:
                return Reservation(False, wait, tuple(row["blocking"]))
            if row["written"] == len(keys):
                return Reservation(True, wait)
            # another instance created one of our buckets under us: the others were charged
            # (a slot lost, never one too many); ask again against the bucket it wrote
        raise RuntimeError(f"rate buckets {keys} stayed contended; nothing is sent")

    async def reserve(self, limits: Limits) -> float:
        """Book one send whatever the wait; returns the seconds to wait before it goes."""
        return (await self.try_reserve(limits, math.inf)).wait

    async def settle(self, limits: list[tuple[str, float]], seconds_ago: float) -> None:
        """A send left ``seconds_ago`` (later than its slot): the next one on each
        ``(key, interval)`` goes no earlier than one interval after it."""
        keys, intervals, _ = _checked([(k, i, 1) for k, i in limits])
        if keys:
            async with self.db.pool.acquire() as conn:
                await conn.execute(_SETTLE, keys, intervals, max(0.0, float(seconds_ago)))

    async def penalize(self, key: str, seconds: float) -> None:
        """The platform said 429 with Retry-After: nothing goes to ``key`` for ``seconds``."""
        async with self.db.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO rate_buckets (key, tat) VALUES ($1, clock_timestamp()"
                " + make_interval(secs => $2)) ON CONFLICT (key) DO UPDATE SET tat ="
                " greatest(rate_buckets.tat, clock_timestamp() + make_interval(secs => $2))",
                key, float(seconds),
            )
