"""LISTEN/NOTIFY wake-ups, so idle workers sleep instead of polling the tables.

Wake-ups are sent after, and outside, the writes they announce (:class:`Notifier`).
A transaction that calls ``pg_notify`` takes a database-wide lock at commit and
holds it until its commit record is flushed, so notifying transactions commit one
at a time and cannot share a WAL flush: admission with the NOTIFY inside ran at
0.3-0.5x a bare insert, without it at ~0.9x (bench/ingress.py, docs/performance.md).
A wake-up is only a hint: workers also look every ``workers.idle_poll_seconds``, and
the listener wakes everything after a reconnect, so one lost to a crash between the
commit and the NOTIFY costs latency, never a message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from .database import Database

__all__ = ["HTTP_REPLY_CHANNEL", "RELOAD_CHANNEL", "REQUEST_RESPONSE_CHANNELS", "Notifier", "listen_forever"]

#: woken when a turn of a request/response channel is committed or one of its chunks
#: reaches a final status (storage/replies.py waits on it)
HTTP_REPLY_CHANNEL = "soulgate_http_reply"
#: a message to every other instance: reload your configuration (``POST /api/reload?everywhere=true``)
RELOAD_CHANNEL = "soulgate_reload"
#: channels whose handler waits, in the admitting process, for the turn's reply
REQUEST_RESPONSE_CHANNELS = frozenset({"http"})

log = logging.getLogger("soulgate.storage")


class Notifier:
    """Coalesced NOTIFYs: ``poke(channel)`` after a commit; one statement in flight at a time,
    at most one per ``min_interval``, carries every channel poked meanwhile, so a burst of
    admissions costs a few NOTIFYs.

    Listeners in this process (:func:`listen_forever` on the same database) are called at
    once, and the NOTIFY, when it comes back to them, is ignored: waiting for the round
    trip through Postgres only added latency, and the echo woke a second worker for the
    same row.
    """

    def __init__(self, acquire: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]) -> None:
        self._acquire = acquire
        self._due: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._local: dict[str, list[Callable[[], None]]] = {}
        #: the payload of this process's NOTIFYs, so its own listeners can tell them apart
        self.tag = f"soulgate:{uuid.uuid4().hex}"
        #: seconds between two NOTIFYs while pokes keep coming (other processes' workers
        #: may hear of a row this much later under load; this process's at once)
        self.min_interval = 0.01
        self._last = float("-inf")

    def subscribe(self, channel: str, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` on every poke of ``channel`` in this process; returns the unsubscriber."""
        self._local.setdefault(channel, []).append(fn)
        return lambda: self._local.get(channel, []).remove(fn)

    def poke(self, channel: str) -> None:
        for fn in list(self._local.get(channel, ())):
            fn()
        self._due.add(channel)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush(), name="soulgate-notify")

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._due:
            # Under load, pokes come faster than NOTIFYs should go: each is a commit under
            # Postgres's notify lock and wakes every listening process. So NOTIFYs are spaced
            # by ``min_interval`` and the pokes in between share the next one; the first
            # wake-up after a quiet spell goes at once.
            pause = self._last + self.min_interval - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            channels, self._due = sorted(self._due), set()
            self._last = loop.time()
            calls = ", ".join(f"pg_notify(${i + 1}, ${len(channels) + 1})" for i in range(len(channels)))
            try:
                async with self._acquire() as conn:
                    await conn.execute(f"SELECT {calls}", *channels, self.tag)
            except Exception as exc:  # the idle re-checks find the rows; see the module docstring
                log.debug("wake-up on %s not sent: %s", channels, exc)
                return

    async def broadcast(self, channel: str, text: str) -> None:
        """Send ``text`` to the ``messages`` handlers of every *other* process listening on
        ``channel`` (see :func:`listen_forever`); raises if Postgres cannot be reached."""
        payload = json.dumps({"from": self.tag, "text": text})
        async with self._acquire() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def aclose(self) -> None:
        """Let a wake-up being sent go out (bounded), so a clean stop loses none."""
        if self._task is not None and not self._task.done():
            with suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 2.0)
            self._task.cancel()


async def listen_forever(
    db: Database,
    handlers: dict[str, Callable[[], None]],
    *,
    messages: dict[str, Callable[[str], None]] | None = None,
    retry: float = 1.0,
) -> None:
    """Call ``handlers[channel]()`` on every NOTIFY; reconnects after a lost connection.

    After each (re)connect every handler is called once, because notifications
    sent while we were not listening are lost. Pokes from this process reach the
    handlers directly (:class:`Notifier`), so their NOTIFYs are skipped here.

    ``messages[channel](text)`` is called for each :meth:`Notifier.broadcast` from another
    process: commands, not wake-ups, so never on a reconnect and never for our own.
    """
    notifier = db.notifier
    unsubscribe = [notifier.subscribe(channel, fn) for channel, fn in handlers.items()]
    try:
        await _listen(db, handlers, messages or {}, notifier.tag, retry)
    finally:
        for undo in unsubscribe:
            with suppress(ValueError):
                undo()


async def _listen(db: Database, handlers: dict[str, Callable[[], None]],
                  messages: dict[str, Callable[[str], None]], own: str, retry: float) -> None:
    while True:
        conn = None
        lost = asyncio.Event()
        try:
            conn = await db.connect_dedicated()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            for channel, fn in handlers.items():
                def cb(_conn: Any, _pid: int, _channel: str, payload: str,
                       fn: Callable[[], None] = fn) -> None:
                    if payload != own:  # ours was delivered in-process already
                        fn()
                await conn.add_listener(channel, cb)
            for channel, take in messages.items():
                def on_message(_conn: Any, _pid: int, _channel: str, payload: str,
                               take: Callable[[str], None] = take) -> None:
                    sender, text = _message(payload)
                    if sender is not None and sender != own:
                        take(text)
                await conn.add_listener(channel, on_message)
            for fn in handlers.values():
                fn()
            while not lost.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), 5.0)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=5.0)  # notices a silent network loss
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("notification listener lost the database (%s); reconnecting", exc)
        finally:
            if conn is not None:
                with suppress(Exception):
                    await conn.close()
        await asyncio.sleep(retry)


def _message(payload: str) -> tuple[str | None, str]:
    """(sender tag, text) of a broadcast; (None, "") for anything else on the channel."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None, ""
    if not isinstance(data, dict) or not isinstance(data.get("from"), str) or not isinstance(data.get("text"), str):
        return None, ""
    return data["from"], data["text"]
