"""Waiting for admitted turns to be answered, whichever instance runs and delivers them.

One waiter per gateway serves every pending HTTP request: a single task asks
the database, in one query, how all awaited inbox rows are doing, whenever a
``soulgate_http_reply`` notification arrives (an http turn was committed or one
of its chunks delivered) and, as a safety net for a lost notification, every
``poll_seconds`` while anything is awaited. Nothing runs while nothing is
awaited but the LISTEN connection.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

__all__ = ["Answer", "ReplyWaiter", "WaiterStopped"]

log = logging.getLogger("soulgate.adapters.http")


class WaiterStopped(Exception):
    """The gateway is stopping; the turn goes on without this request."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished turn: its reply chunks (``storage.TurnProgress``) and token usage."""

    progress: Any
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def text(self) -> str:
        return "\n\n".join(c.text for c in self.progress.chunks if c.text.strip())


class ReplyWaiter:
    def __init__(self, repo: Any, *, poll_seconds: float = 2.0) -> None:
        self._repo = repo  # storage.RepliesRepo, reached through Services.store
        self._poll = poll_seconds
        self._waiting: dict[str, list[asyncio.Future[Answer]]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._repo.listen(self._wake.set), name="soulgate-http-listen"),
                       asyncio.create_task(self._run(), name="soulgate-http-waiter")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(BaseException):
                await task
        self._tasks = []
        for futures in self._waiting.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(WaiterStopped())
        self._waiting.clear()

    @property
    def waiting(self) -> int:
        return sum(len(f) for f in self._waiting.values())

    def expect(self, inbox_id: str) -> asyncio.Future[Answer]:
        """A future resolved with the turn's answer once it is committed and delivered."""
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(inbox_id, []).append(fut)
        self._wake.set()  # look at once: a retried request's turn may be finished already
        return fut

    def forget(self, inbox_id: str, fut: asyncio.Future[Answer]) -> None:
        """Stop waiting (answered, timed out, or the client left)."""
        futures = self._waiting.get(inbox_id)
        if futures and fut in futures:
            futures.remove(fut)
            if not futures:
                del self._waiting[inbox_id]
        if not fut.done():
            fut.cancel()

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._wake.clear()  # before the query: a notification during it triggers another look
            try:
                await self._look(list(self._waiting))
            except Exception as exc:  # the database is away: keep the requests waiting, look again
                log.warning("could not check on waiting http requests: %s: %s", type(exc).__name__, exc)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)

    async def _look(self, inbox_ids: list[str]) -> None:
        progress = await self._repo.progress(inbox_ids)
        done = [p for p in progress.values() if p.finished]
        if not done:
            return
        try:
            usage = await self._repo.usage([(p.inbox_id, p.conversation_key) for p in done])
        except Exception:  # usage is a courtesy: answer with zeros rather than keep the client waiting
            log.warning("could not read token usage of finished http turns", exc_info=True)
            usage = {}
        for p in done:
            answer = Answer(p, *usage.get(p.inbox_id, (0, 0)))
            for fut in self._waiting.pop(p.inbox_id, []):
                if not fut.done():
                    fut.set_result(answer)
