"""One IMAP connection (aioimaplib) that never hangs and knows when it is dead.

aioimaplib does not fail pending commands when the connection drops, and its
``idle_start`` waits without a limit for the server's continuation. So every
call here races the command against a timeout *and* against the
connection-lost callback; either ends the call with :class:`ImapError`, after
which the caller throws the connection away and opens a new one.

Imported only when an email account starts (see ``adapters/email/__init__.py``).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aioimaplib

from .config import ImapSettings

__all__ = ["ImapConnection", "ImapError", "NewMessage"]

_T = TypeVar("_T")
_FETCH_LINE = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS$")


class ImapError(Exception):
    """The command failed or the connection is unusable; reconnect."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    uid: int
    size: int
    internal_date: datetime | None


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _internal_date(value: bytes) -> datetime | None:
    try:
        return datetime.strptime(value.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None


def _items(lines: list[Any]) -> list[tuple[bytes, bytes | None]]:
    """aioimaplib's flat FETCH lines → ``(attributes text, literal or None)`` per message.

    It hands back, per message, a ``b'<seq> FETCH (UID … BODY[] {n}'`` line, the literal
    as a ``bytearray``, then the rest of the item; the last line is the tagged status text.
    """
    out: list[tuple[bytes, bytes | None]] = []
    text: list[bytes] = []
    literal: bytes | None = None
    started = False
    for line in lines[:-1]:
        if isinstance(line, bytearray):
            literal = bytes(line)
            continue
        if _FETCH_LINE.match(line):
            if started:
                out.append((b" ".join(text), literal))
            text, literal, started = [line], None, True
        elif started:
            text.append(line)
    if started:
        out.append((b" ".join(text), literal))
    return out


class ImapConnection:
    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self.timeout = settings.timeout_seconds
        self.client: Any = None
        self.capabilities: set[str] = set()
        self._lost = asyncio.Event()

    @property
    def alive(self) -> bool:
        return self.client is not None and not self._lost.is_set()

    def _on_lost(self, exc: Exception | None) -> None:
        self._lost.set()

    async def _call(self, aw: Awaitable[_T], what: str, timeout: float | None = None) -> _T:  # noqa: ASYNC109
        if self._lost.is_set():
            raise ImapError(f"{what}: the connection is gone")
        task = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=timeout or self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (the adapter stops): do not leave the command behind
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task in done:
            try:
                return task.result()
            except aioimaplib.AioImapException as exc:
                raise ImapError(f"{what}: {exc}") from exc
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                raise ImapError(f"{what}: {type(exc).__name__}: {exc}") from exc
        task.cancel()
        with suppress(BaseException):
            await task
        if self._lost.is_set():
            raise ImapError(f"{what}: the connection was lost")
        self._lost.set()  # a command that does not answer means a dead link: never reuse it
        raise ImapError(f"{what}: no answer within {timeout or self.timeout:g}s")

    async def _ok(self, aw: Awaitable[Any], what: str) -> Any:
        response = await self._call(aw, what)
        if response.result != "OK":
            text = b" ".join(bytes(x) for x in response.lines if isinstance(x, bytes | bytearray))
            raise ImapError(f"{what} refused: {response.result} {text.decode('utf-8', 'replace')[:200]}")
        return response

    async def open(self) -> None:
        s = self.settings
        if s.tls == "implicit":
            self.client = aioimaplib.IMAP4_SSL(host=s.host, port=s.effective_port, timeout=self.timeout,
                                               ssl_context=s.tls_context())
        else:
            self.client = aioimaplib.IMAP4(host=s.host, port=s.effective_port, timeout=self.timeout)
        # IMAP4_SSL takes no conn_lost_cb; the protocol object exists before the connection does
        self.client.protocol.conn_lost_cb = self._on_lost
        await self._call(self.client.wait_hello_from_server(), "connect")
        password = s.password.get_secret_value()
        if s.auth == "xoauth2":
            await self._ok(self.client.xoauth2(s.user, password), "AUTHENTICATE XOAUTH2")
        else:
            # aioimaplib sends the user name as is; quoted, any name is a valid IMAP string
            await self._ok(self.client.login(_quoted(s.user), password), "LOGIN")
        if not any(c.upper() == "IDLE" for c in self.client.protocol.capabilities):
            # some servers announce more after LOGIN without sending it: ask once
            with suppress(ImapError):
                await self._call(self.client.protocol.capability(), "CAPABILITY")
        self.capabilities = {c.upper() for c in self.client.protocol.capabilities}

    async def select(self, mailbox: str) -> tuple[int, int]:
        """SELECT; returns ``(UIDVALIDITY, EXISTS)``."""
        response = await self._ok(self.client.select(_quoted(mailbox)), f"SELECT {mailbox}")
        validity = exists = None
        for line in response.lines:
            if not isinstance(line, bytes | bytearray):
                continue
            if (m := _UIDVALIDITY.search(line)) is not None:
                validity = int(m.group(1))
            elif (m := _EXISTS.match(bytes(line).strip())) is not None:
                exists = int(m.group(1))
        if validity is None:
            raise ImapError(f"SELECT {mailbox}: the server sent no UIDVALIDITY")
        return validity, exists or 0

    async def new_messages(self, after: int) -> list[NewMessage]:
        """Messages with UID > ``after``, oldest first.

        ``UID FETCH n:*`` always matches the highest UID even when it is below n, so
        the result is filtered here.
        """
        response = await self._ok(self.client.uid("fetch", f"{after + 1}:*", "(UID RFC822.SIZE INTERNALDATE)"),
                                  "UID FETCH (sizes)")
        found: dict[int, NewMessage] = {}
        for text, _literal in _items(response.lines):
            uid = _UID.search(text)
            if uid is None or int(uid.group(1)) <= after:
                continue
            size = _SIZE.search(text)
            date = _DATE.search(text)
            n = int(uid.group(1))
            found[n] = NewMessage(n, int(size.group(1)) if size else 0,
                                  _internal_date(date.group(1)) if date else None)
        return [found[k] for k in sorted(found)]

    async def fetch(self, uid: int, part: str = "BODY.PEEK[]") -> bytes | None:
        """The raw message (or a part of it) without setting \\Seen; None if it is gone."""
        response = await self._ok(self.client.uid("fetch", str(uid), f"(UID {part})"), f"UID FETCH {uid}")
        for text, literal in _items(response.lines):
            found = _UID.search(text)
            if found is not None and int(found.group(1)) == uid and literal is not None:
                return literal
        return None

    async def add_flag(self, uid: int, flag: str) -> None:
        await self._ok(self.client.uid("store", str(uid), "+FLAGS.SILENT", f"({flag})"), f"UID STORE {uid}")

    async def ensure_folder(self, name: str) -> None:
        """CREATE, ignoring "already exists" (a NO) but not a dead connection."""
        await self._call(self.client.create(_quoted(name)), f"CREATE {name}")

    async def move(self, uid: int, folder: str) -> None:
        if "MOVE" in self.capabilities:
            await self._ok(self.client.uid("move", str(uid), _quoted(folder)), f"UID MOVE {uid}")
            return
        await self._ok(self.client.uid("copy", str(uid), _quoted(folder)), f"UID COPY {uid}")
        await self.add_flag(uid, "\\Deleted")
        if "UIDPLUS" in self.capabilities:  # a plain EXPUNGE would also remove others' \Deleted mail
            await self._ok(self.client.uid("expunge", str(uid)), f"UID EXPUNGE {uid}")

    @property
    def can_idle(self) -> bool:
        return "IDLE" in self.capabilities

    async def idle(self, seconds: float) -> bool:
        """IDLE until the server reports new mail (True) or ``seconds`` pass (False)."""
        queue = self.client.protocol.idle_queue
        while not queue.empty():  # leftovers of an earlier IDLE
            queue.get_nowait()
        idle = await self._call(self.client.idle_start(timeout=seconds), "IDLE")
        woke = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds + self.timeout
        while (remaining := deadline - loop.time()) > 0:
            push = await self._next_push(queue, remaining)
            if push is None or push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                break  # time to renew
            if any(_EXISTS.match(bytes(p).strip()) for p in push if isinstance(p, bytes | bytearray)):
                woke = True
                break
        # DONE; a server that does not finish the IDLE in time is treated as dead
        self.client.idle_done()
        await self._call(idle, "IDLE DONE")
        return woke

    async def _next_push(self, queue: asyncio.Queue[Any], timeout: float) -> Any:  # noqa: ASYNC109
        """The next untagged lines pushed during IDLE; None after ``timeout``."""
        get = asyncio.ensure_future(queue.get())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({get, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if get in done:
            return get.result()
        get.cancel()
        if self._lost.is_set():
            raise ImapError("IDLE: the connection was lost")
        return None

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        # LOGOUT politely, unless the link is dead or an IDLE is still open (stopping in the
        # middle of one): aioimaplib would queue LOGOUT behind the IDLE and wait for nothing
        if not self._lost.is_set() and not client.protocol.has_pending_idle_command():
            with suppress(Exception):
                await asyncio.wait_for(client.logout(), min(2.0, self.timeout))
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()
        self._lost.set()
