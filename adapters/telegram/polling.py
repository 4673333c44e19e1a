"""Our own getUpdates loop: store first, confirm after.

aiogram's Dispatcher confirms an update (by asking for the next offset) before
its handler has finished, so a crash loses what was in flight. Here the order
is: getUpdates → admit every update (each returns after the inbox commit) →
only then the next getUpdates with ``offset = last update_id + 1``, which is
what confirms them to Telegram. A crash anywhere before that call means
Telegram sends the same updates again, and the inbox's natural keys
(``update:<id>``, ``msg:<chat>:<message>``) turn the repeat into a no-op.

One instance polls a bot at a time (``ctx.run_as_leader`` keyed by the bot
id); the others wait to take over. A 409 Conflict means someone else polls
the same token (another deployment, a developer's laptop): we back off and try
again rather than crash or hammer Telegram.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.methods import GetUpdates
from aiogram.types import Update

from gateway import AdapterContext

__all__ = ["Poller"]

log = logging.getLogger("soulgate.adapters.telegram")
#: Telegram keeps unconfirmed updates for 24 hours; an older stored offset means nothing
OFFSET_MAX_AGE = 24 * 3600.0
STOP_GRACE = 1.0  # seconds a stopping poller may take to finish admitting a batch

Ingest = Callable[[Update, dict[str, Any]], Awaitable[None]]


class _Backoff:
    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap, self.current = first, cap, 0.0

    def next(self) -> float:
        self.current = self.first if self.current == 0 else min(self.cap, self.current * 2)
        return self.current * random.uniform(0.8, 1.2)  # instances do not retry in lockstep

    def reset(self) -> None:
        self.current = 0.0


class Poller:
    def __init__(
        self, *, bot: Bot, ctx: AdapterContext, bot_id: str, ingest: Ingest,
        prepare: Callable[[], Awaitable[None]], timeout: int, allowed_updates: list[str],
        scrub: Callable[[str], str] = str,
    ) -> None:
        self.bot, self.ctx, self.bot_id = bot, ctx, bot_id
        self.ingest, self.prepare = ingest, prepare
        self.timeout, self.allowed_updates = timeout, allowed_updates
        self.scrub = scrub  # error texts may quote a URL, and a Bot API URL holds the token
        self.polls = 0
        self.conflicts = 0
        self.last_error: str | None = None
        self._stopping = False
        self._admitting = False  # storing a batch: let it finish before stopping
        self._in_conflict = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"telegram-poll-{self.bot_id}")

    async def stop(self) -> None:
        self._stopping = True
        task = self._task
        if task is None:
            return
        if self._admitting:
            # Let the batch being stored finish; cancelling is safe too (nothing is
            # confirmed before the next getUpdates), just wasteful.
            await asyncio.wait({task}, timeout=STOP_GRACE)
        task.cancel()
        with suppress(BaseException):
            await task

    async def _run(self) -> None:
        await self.ctx.run_as_leader(self._leadership, self._lead,
                                     on_error=self._failed, backoff=2.0, max_backoff=30.0)

    @property
    def _leadership(self) -> str:
        return f"telegram:{self.bot_id}"

    @property
    def leading(self) -> bool:
        """This instance polls the bot right now."""
        return self.ctx.leads(self._leadership)

    def _failed(self, exc: Exception) -> None:
        # Our own log lines, scrubbed: an error text may quote a Bot API URL, which holds the token.
        if isinstance(exc, TelegramAPIError):  # getMe/deleteWebhook before polling: Telegram unreachable
            self.last_error = self.scrub(f"{type(exc).__name__}: {exc.message}")
            log.warning("telegram bot %s: cannot start polling (%s); retrying", self.bot_id, self.last_error)
        else:
            self.last_error = self.scrub(f"{type(exc).__name__}: {exc}")
            log.error("telegram bot %s: poller failed (%s); restarting", self.bot_id, self.last_error)

    async def _lead(self) -> None:
        await self.prepare()  # getMe, and drop a webhook left from webhook mode
        offset = await self._load_offset()
        backoff = _Backoff()
        while not self._stopping:
            try:
                updates = await self.bot(
                    GetUpdates(offset=offset, limit=100, timeout=self.timeout,
                               allowed_updates=self.allowed_updates),
                    request_timeout=self.timeout + 15,
                )
            except TelegramConflictError as exc:
                self.conflicts += 1
                self.last_error = f"409 Conflict: {exc.message}"
                delay = backoff.next()
                if not self._in_conflict:  # one audit row per episode, not per retry
                    self._in_conflict = True
                    await self.ctx.audit("telegram_poll_conflict", {"error": exc.message, "bot_id": self.bot_id})
                log.warning("telegram bot %s: %s; someone else polls this token, retrying in %.0fs",
                            self.bot_id, exc.message, delay)
                await asyncio.sleep(delay)
                continue
            except TelegramRetryAfter as exc:
                self.last_error = f"429: retry after {exc.retry_after}s"
                await asyncio.sleep(exc.retry_after)
                continue
            except TelegramUnauthorizedError as exc:
                self.last_error = f"401 Unauthorized: {exc.message} (check the token)"
                log.error("telegram bot %s: the token was rejected; retrying in 60s", self.bot_id)
                await asyncio.sleep(60)
                continue
            except TelegramAPIError as exc:  # network trouble, 5xx
                self.last_error = self.scrub(f"{type(exc).__name__}: {exc.message}")
                delay = backoff.next()
                log.warning("telegram bot %s: getUpdates failed (%s); retrying in %.1fs",
                            self.bot_id, self.last_error, delay)
                await asyncio.sleep(delay)
                continue
            self.polls += 1
            self._in_conflict = False
            backoff.reset()
            if not updates:
                continue
            self._admitting = True
            try:
                for update in updates:
                    raw = update.model_dump(mode="json", exclude_none=True, by_alias=True)
                    await self.ingest(update, raw)
                    offset = update.update_id + 1
            except Exception as exc:
                # Most likely the database: keep the rest unconfirmed and fetch it again.
                self.last_error = self.scrub(f"admit failed: {type(exc).__name__}: {exc}")
                log.warning("telegram bot %s: could not store an update (%s); will retry",
                            self.bot_id, self.last_error)
                await asyncio.sleep(backoff.next())
            finally:
                self._admitting = False
            if offset is not None:
                await self._save_offset(offset)

    async def _load_offset(self) -> int | None:
        saved = await self.ctx.get_state("poll_offset")
        if not isinstance(saved, dict) or not isinstance(saved.get("offset"), int):
            return None
        if time.time() - float(saved.get("saved_at", 0)) > OFFSET_MAX_AGE:
            return None
        return int(saved["offset"])

    async def _save_offset(self, offset: int) -> None:
        # Only a shortcut for the next leader: Telegram itself keeps the confirmation.
        try:
            await self.ctx.set_state("poll_offset", {"offset": offset, "saved_at": time.time()})
        except Exception as exc:
            log.debug("could not save the poll offset: %s", exc)
