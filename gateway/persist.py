"""Writing down what has already happened, through a short database outage.

A turn that has run, or a message the platform has accepted, must be recorded;
otherwise the crash rule takes over once the row's lease expires: the turn runs
again (a second LLM call), a sent message counts as "maybe sent" (parked on a
never_twice channel, posted again on a never_lost one), and the conversation
waits for the lease meanwhile. When Postgres is only unreachable for a moment (a
restart, a failover, a cut connection) the worker still knows the outcome, so it
keeps trying to record it until the database answers again, for at most one
lease: after that another worker may own the row, and the claim token turns a
late write into a no-op anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from storage import connection_trouble

__all__ = ["persist"]

T = TypeVar("T")


async def persist(
    write: Callable[[], Awaitable[T]],
    *,
    within: float,
    on_trouble: Callable[[BaseException], None] | None = None,
) -> T:
    """``await write()``, again and again while the database is out of reach, for up to ``within``
    seconds. Any other error, or the same trouble after the deadline, is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.05
    while True:
        try:
            return await write()
        except Exception as exc:
            if not connection_trouble(exc) or loop.time() + delay > deadline:
                raise
            if on_trouble is not None:
                on_trouble(exc)
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 2)
