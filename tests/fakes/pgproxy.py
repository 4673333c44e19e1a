"""A byte-level proxy in front of Postgres that can lose one answer on purpose.

Between a client (asyncpg) and the test Postgres (its unix socket), it passes
the wire protocol through untouched. Armed with a marker, it swallows the first
answer from the server that contains the marker's bytes, and everything after
it on that connection, then cuts the connection a moment later: the statement
has run and committed, and the client only sees its connection die. That is
what a Postgres restart or a network cut does to a statement in flight, made
to happen at one chosen statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from urllib.parse import parse_qs, urlsplit

__all__ = ["AnswerLosingProxy"]

#: after the swallowed answer: time for the rest of it (the commit, ReadyForQuery) to arrive
_CUT_AFTER = 0.3


class AnswerLosingProxy:
    """``async with AnswerLosingProxy(url) as proxy:`` then connect to ``proxy.url``."""

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        query = parse_qs(parts.query)
        host = (query.get("host") or [""])[0]
        if not host.startswith("/"):
            raise ValueError(f"expected a unix-socket Postgres URL, got {database_url!r}")
        self._socket = os.path.join(host, f".s.PGSQL.{parts.port or 5432}")
        self._database_url = parts
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.lost = asyncio.Event()  #: set when an answer was swallowed and its connection cut
        self.url = ""

    def lose_answer_containing(self, marker: str) -> None:
        """Swallow the next server answer that contains ``marker`` (once)."""
        self.lost.clear()
        self._marker = marker.encode()

    async def __aenter__(self) -> AnswerLosingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        user = self._database_url.username or "postgres"
        self.url = f"postgresql://{user}@127.0.0.1:{port}{self._database_url.path}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_r, server_w = await asyncio.open_unix_connection(self._socket)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        upstream = asyncio.create_task(self._pipe(client_r, server_w, watch=False))
        downstream = asyncio.create_task(self._pipe(server_r, client_w, watch=True))
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (upstream, downstream):
                t.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            for w in (client_w, server_w):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, watch: bool) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            if watch and self._marker is not None and self._marker in data:
                self._marker = None
                # keep reading (and dropping) until the server has finished the statement
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CUT_AFTER):
                        while await reader.read(65536):
                            pass
                self.lost.set()
                return  # the caller cuts both sides
            writer.write(data)
            await writer.drain()
