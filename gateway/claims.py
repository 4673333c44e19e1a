"""Claiming a queue row when the claim's answer may be lost.

A claim commits in Postgres, and its answer can die with the connection (a
restart, a failover, a cut network). The row is then claimed under a token
nobody holds, and its conversation (or destination) would wait out the lease;
an outbox row would even count as "maybe sent". So a worker claims under a
token of its own choosing and keeps it when the claim fails: the next time it
first asks for the row that token took (``reclaim``), then claims afresh.
Used by the dispatch and the delivery workers alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Claimer"]

T = TypeVar("T")


class Claimer(Generic[T]):
    """One worker's claims on one queue; ``claim`` raises what the database raised."""

    def __init__(self, reclaim: Callable[[uuid.UUID], Awaitable[T | None]]) -> None:
        self._reclaim = reclaim
        self.unanswered: uuid.UUID | None = None  #: the token of a claim whose answer was lost

    async def claim(self, fresh: Callable[..., Awaitable[T | None]]) -> T | None:
        """The row an unanswered claim took, if any; else ``fresh(token=...)``'s row."""
        token = self.unanswered or uuid.uuid4()
        try:
            got = await self._reclaim(self.unanswered) if self.unanswered is not None else None
            if got is None:
                got = await fresh(token=token)
        except BaseException:
            self.unanswered = token  # (cancelled too: the statement may have committed)
            raise
        self.unanswered = None
        return got
