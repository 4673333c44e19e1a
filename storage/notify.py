"""LISTEN/NOTIFY wake-ups, so idle workers sleep instead of polling the tables."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from .database import Database

__all__ = ["listen_forever"]

log = logging.getLogger("soulgate.storage")


async def listen_forever(db: Database, handlers: dict[str, Callable[[], None]], *, retry: float = 1.0) -> None:
    """Call ``handlers[channel]()`` on every NOTIFY; reconnects after a lost connection.

    After each (re)connect every handler is called once, because notifications
    sent while we were not listening are lost.
    """
    while True:
        conn = None
        lost = asyncio.Event()
        try:
            conn = await db.connect_dedicated()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            for channel, fn in handlers.items():
                def cb(*_: Any, fn: Callable[[], None] = fn) -> None:
                    fn()
                await conn.add_listener(channel, cb)
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
