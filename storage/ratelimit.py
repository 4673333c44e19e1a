"""Outbound rate limits shared by every gateway instance (GCRA buckets in Postgres).

Each bucket keeps a theoretical arrival time (TAT). Reserving a send moves the
TAT forward by one interval and tells the caller how long to wait before the
send conforms; a burst of ``b`` is a tolerance of ``(b - 1)`` intervals. One
row per bucket, one UPDATE per reservation: correct across instances without a
coordinator.
"""

from __future__ import annotations

from .database import Database

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def reserve(self, limits: list[tuple[str, float, int]]) -> float:
        """Reserve one send on every ``(key, interval, burst)``; returns seconds to wait."""
        if not limits:
            return 0.0
        wait = 0.0
        async with self.db.transaction() as conn:
            for key, interval, burst in sorted(limits):  # sorted: no deadlock between instances
                w = await conn.fetchval(
                    "INSERT INTO rate_buckets (key, tat)"
                    " VALUES ($1, clock_timestamp() + make_interval(secs => $2))"
                    " ON CONFLICT (key) DO UPDATE SET tat = greatest(rate_buckets.tat,"
                    " clock_timestamp()) + make_interval(secs => $2)"
                    " RETURNING extract(epoch FROM tat - clock_timestamp())::float8 - $2 * $3",
                    key, float(interval), max(1, burst),
                )
                wait = max(wait, float(w))
        return max(0.0, wait)

    async def penalize(self, key: str, seconds: float) -> None:
        """The platform said 429 with Retry-After: nothing goes to ``key`` for ``seconds``."""
        async with self.db.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO rate_buckets (key, tat) VALUES ($1, clock_timestamp()"
                " + make_interval(secs => $2)) ON CONFLICT (key) DO UPDATE SET tat ="
                " greatest(rate_buckets.tat, clock_timestamp() + make_interval(secs => $2))",
                key, float(seconds),
            )
