"""The mailbox watcher: leader election, IDLE/poll, watermark, reconnects.

Order for every message: fetch (``BODY.PEEK[]``, so nothing is marked read) →
decide and admit (:class:`Intake`, which returns only after the inbox commit
or the audit row) → flag / move → only then the watermark (``(UIDVALIDITY,
last UID)`` in adapter state) moves past it. A crash anywhere in between means
the message is fetched again, and the inbox's natural keys (IMAP identity and
``mid:<Message-ID>``) make the repeat a no-op.

One instance watches a mailbox at a time (``ctx.run_as_leader("email:<account>")``);
the others wait to take over. After every (re)connect the mailbox is polled
once, then the watcher IDLEs (if the server can), re-issuing IDLE and polling
again every ``min(idle_renew_seconds, poll_interval_seconds)``; without IDLE
it polls every ``poll_interval_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from gateway import AdapterContext

from .config import EmailConfig
from .imap import ImapConnection, ImapError, NewMessage
from .intake import Intake, Outcome

__all__ = ["MailboxWatcher"]

log = logging.getLogger("soulgate.adapters.email")


@dataclass(slots=True)
class Watermark:
    uidvalidity: int
    last_uid: int
    #: when this account first started
    since: float
    #: set after a UIDVALIDITY change with backlog = "skip": mail the server dates before
    #: this was backlog at the first start, not news
    skip_before: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"uidvalidity": self.uidvalidity, "last_uid": self.last_uid, "since": self.since,
                "skip_before": self.skip_before}


class _Backoff:
    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap, self.current = first, cap, 0.0

    def next(self) -> float:
        self.current = self.first if self.current == 0 else min(self.cap, self.current * 2)
        return self.current * random.uniform(0.8, 1.2)  # instances do not retry in lockstep

    def reset(self) -> None:
        self.current = 0.0


class MailboxWatcher:
    def __init__(self, ctx: AdapterContext, config: EmailConfig, account: str, intake: Intake) -> None:
        self.ctx, self.config, self.account, self.intake = ctx, config, account, intake
        self.mailbox = config.imap.mailbox
        self.connected = self.idling = False
        self.polls = self.connects = 0
        self.last_error: str | None = None
        self.last_poll_at: float | None = None
        self.watermark: Watermark | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def state_key(self) -> str:
        return f"watermark:{self.mailbox}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"email-{self.account}")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with suppress(BaseException):
                await self._task

    # -- leadership and reconnects -----------------------------------------------------------

    async def _run(self) -> None:
        await self.ctx.run_as_leader(f"email:{self.account}", self._lead,
                                     on_error=self._failed, backoff=1.0, max_backoff=30.0)

    @property
    def leading(self) -> bool:
        """This instance watches the mailbox right now."""
        return self.ctx.leads(f"email:{self.account}")

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.error("email %s: watcher failed (%s); restarting", self.account, self.last_error)

    async def _lead(self) -> None:
        backoff = _Backoff()
        while not self._stopping:
            conn = ImapConnection(self.config.imap)
            try:
                await self._session(conn, backoff)
            except (ImapError, OSError, TimeoutError) as exc:
                self.last_error = f"IMAP: {exc}"
                log.warning("email %s: %s; reconnecting", self.account, self.last_error)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # most likely the database (admit, state, audit)
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("email %s: %s; will fetch again", self.account, self.last_error)
            finally:
                self.connected = self.idling = False
                await conn.close()
            if not self._stopping:
                await self._sleep(backoff.next())

    async def _session(self, conn: ImapConnection, backoff: _Backoff) -> None:
        imap = self.config.imap
        await conn.open()
        self.connected = True
        self.connects += 1
        if self.config.processed_folder:
            await conn.ensure_folder(self.config.processed_folder)
        await self._poll(conn)  # after every (re)connect: IDLE only reports what comes later
        backoff.reset()
        self.last_error = None
        while not self._stopping:
            if imap.idle and conn.can_idle:
                self.idling = True
                await conn.idle(min(imap.idle_renew_seconds, imap.poll_interval_seconds))
                self.idling = False
            else:
                await self._sleep(imap.poll_interval_seconds)
            if not conn.alive:
                raise ImapError("the connection was lost")
            await self._poll(conn)

    async def _sleep(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # -- one poll ----------------------------------------------------------------------------

    async def _poll(self, conn: ImapConnection) -> None:
        validity, exists = await conn.select(self.mailbox)
        mark = await self._watermark(conn, validity, exists)
        self.polls += 1
        self.last_poll_at = time.time()
        if exists == 0:
            return  # some servers refuse UID FETCH n:* on an empty mailbox
        for new in await conn.new_messages(mark.last_uid):
            if self._stopping:
                return
            await self._one(conn, validity, new, mark)
            mark.last_uid = new.uid
            await self.ctx.set_state(self.state_key, mark.to_json())

    async def _watermark(self, conn: ImapConnection, validity: int, exists: int) -> Watermark:
        saved = await self.ctx.get_state(self.state_key)
        if isinstance(saved, dict) and isinstance(saved.get("uidvalidity"), int):
            skip = saved.get("skip_before")
            mark = Watermark(int(saved["uidvalidity"]), int(saved.get("last_uid") or 0),
                             float(saved.get("since") or 0.0), float(skip) if skip is not None else None)
            if mark.uidvalidity != validity:
                # The server renumbered the mailbox: every UID may name another message now.
                # Read it all again; Message-IDs (inbox alt ids, mid: state) catch the repeats.
                await self.ctx.audit("email_uidvalidity_changed", {
                    "mailbox": self.mailbox, "old": mark.uidvalidity, "new": validity, "messages": exists,
                })
                log.warning("email %s: UIDVALIDITY of %s changed (%s → %s); resyncing by Message-ID",
                            self.account, self.mailbox, mark.uidvalidity, validity)
                # INTERNALDATE has whole seconds (and the server its own clock): a margin, so
                # mail that came just after the first start is not taken for backlog
                skip_before = int(mark.since) - 2 if self.config.backlog == "skip" and mark.since else None
                mark = Watermark(validity, 0, mark.since, skip_before)
                await self.ctx.set_state(self.state_key, mark.to_json())
        else:
            last = 0
            if self.config.backlog == "skip" and exists:
                found = await conn.new_messages(0)
                last = found[-1].uid if found else 0
                await self.ctx.audit("email_backlog_skipped", {"mailbox": self.mailbox, "messages": len(found)})
            mark = Watermark(validity, last, time.time())
            await self.ctx.set_state(self.state_key, mark.to_json())
        self.watermark = mark
        return mark

    async def _one(self, conn: ImapConnection, validity: int, new: NewMessage, mark: Watermark) -> None:
        where: dict[str, Any] = {"mailbox": self.mailbox, "uidvalidity": validity, "uid": new.uid}
        if mark.skip_before and new.internal_date and new.internal_date.timestamp() < mark.skip_before:
            return  # after a UIDVALIDITY change: mail that was backlog at the first start
        outcome: Outcome
        if new.size > self.config.max_message_bytes:
            head = await conn.fetch(new.uid, "BODY.PEEK[HEADER]") or b""
            outcome = await self.intake.unreadable(
                head, f"{new.size} bytes, over max_message_bytes ({self.config.max_message_bytes}); "
                      "left in the mailbox, headers kept", **where)
        else:
            raw = await conn.fetch(new.uid)
            if raw is None:
                return  # expunged since the size fetch
            outcome = await self.intake.take(raw, **where)
        if outcome.kind != "unreadable":  # unreadable mail stays where a person will look
            await self._file(conn, new.uid)

    async def _file(self, conn: ImapConnection, uid: int) -> None:
        if self.config.mark_seen:
            await conn.add_flag(uid, "\\Seen")
        if self.config.processed_folder:
            await conn.move(uid, self.config.processed_folder)

    def status(self) -> dict[str, Any]:
        mark = self.watermark
        return {
            "mailbox": self.mailbox, "leading": self.leading, "connected": self.connected,
            "idling": self.idling, "polls": self.polls, "connects": self.connects,
            "uidvalidity": mark.uidvalidity if mark else None, "last_uid": mark.last_uid if mark else None,
            "last_poll_at": self.last_poll_at, "last_error": self.last_error,
        }
