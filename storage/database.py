"""The asyncpg pool, the embedded Postgres, and migrations.

With no URL the gateway starts an embedded PostgreSQL with pgvector (the
``pgserver`` package) in a local data directory, so a new user needs no
database. Migrations are plain SQL files applied in name order at start, each
in its own transaction, serialized across instances by an advisory lock.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway import jsontext

from .notify import Notifier

__all__ = [
    "ConnectionLane",
    "Database",
    "DatabaseUnavailable",
    "connection_trouble",
    "create_database",
    "drop_database",
    "hide_password",
    "start_embedded",
]

log = logging.getLogger("soulgate.storage")
_MIGRATION_LOCK = 0x5011_6A7E  # advisory lock key serializing migrations across instances


class DatabaseUnavailable(Exception):
    """Postgres could not be reached; the message names the URL with the password hidden."""


def connection_trouble(exc: BaseException) -> bool:
    """True when ``exc`` says the database was out of reach (down, restarting, the connection
    cut), so the same statement may well succeed in a moment; False for a statement Postgres
    refused (a constraint, a bad value), which would fail again."""
    return isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError | asyncpg.InterfaceError
                      | asyncpg.exceptions.OperatorInterventionError)


def hide_password(url: str) -> str:
    """``postgresql://u:secret@h/db`` → ``postgresql://u:***@h/db`` (for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded Postgres in ``data_dir``; returns its URL.

    pgserver shares one server between the processes that use the same data
    directory and stops it when the last one exits.
    """
    import pgserver  # imported lazily: only the embedded default needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR in containers
        warnings.simplefilter("ignore")
        server = pgserver.get_server(str(data_dir))
    return str(server.get_uri())


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_url: str, name: str) -> str:
    """Create an empty database on the server at ``server_url``; returns its URL (tests, benchmarks)."""
    if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", name):
        raise ValueError(f"bad database name {name!r}")
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", name):
        raise ValueError(f"bad database name {name!r}")
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # rows are decoded with orjson (every claim reads an envelope), values encoded with json
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=jsontext.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=jsontext.loads, schema="pg_catalog")
    try:
        from pgvector.asyncpg import register_vector

        await register_vector(conn)
    except (ValueError, asyncpg.PostgresError):  # before the first migration: no vector type yet
        pass


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """Hand a connection back to the pool without asyncpg's reset query.

    The default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    on every release: a round trip per query, ~0.4 ms on a loaded 2-core machine
    (bench/recall.py). Pool connections carry no session state to undo: advisory
    locks and LISTEN live on dedicated connections (:meth:`Database.connect_dedicated`),
    nothing sets a session variable, and asyncpg still rolls back a transaction left open.
    """


class Database:
    """Owns the pool; repositories borrow connections from it."""

    def __init__(self, url: str, *, pool_min: int = 1, pool_max: int = 10, timeout: float = 10.0):
        self.url = url
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self.notifier = Notifier(lambda: self.pool.acquire())
        self._lanes: list[ConnectionLane] = []

    def lane(self, size: int) -> ConnectionLane:
        """Up to ``size`` connections of their own, outside the pool (closed with it)."""
        lane = ConnectionLane(self, size)
        self._lanes.append(lane)
        return lane

    def notify_soon(self, channel: str) -> None:
        """Wake listeners of ``channel``, here at once and elsewhere by NOTIFY; call it after
        the write it announces has committed (see storage/notify.py)."""
        self.notifier.poke(channel)

    @property
    def safe_url(self) -> str:
        return hide_password(self.url)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not connected")
        return self._pool

    async def connect(self, *, migrate: bool = True) -> None:
        try:
            if migrate:
                conn = await asyncpg.connect(self.url, timeout=self._timeout)
                try:
                    await self._migrate(conn)
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=self._timeout,
                init=_init_connection,
                reset=_no_session_reset,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(
                f"cannot reach the database at {self.safe_url}: {type(exc).__name__}: {exc}"
            ) from exc

    async def close(self) -> None:
        await self.notifier.aclose()
        for lane in self._lanes:
            await lane.aclose()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def connect_dedicated(self) -> asyncpg.Connection:
        """A connection outside the pool, for advisory locks and LISTEN.

        (The pool resets advisory locks and listeners when a connection is returned.)
        """
        conn = await asyncpg.connect(self.url, timeout=self._timeout)
        await _init_connection(conn)
        return conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1", timeout=2)
            return True
        except Exception:
            return False

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, sql in _migration_files():
                if name in done:
                    continue
                log.info("applying migration %s", name)
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


class ConnectionLane:
    """Connections kept for one hot path, outside the pool.

    The admission path (storage/admission.py) sends a statement per webhook, or per
    group of them. Through the pool each borrowed connection cost an acquire and a
    release (asyncpg wraps the release in a task of its own): about a tenth of the
    gateway's CPU per webhook at moderate load. And an admission then never waits for
    a pool connection that slow turns hold. A connection is opened when needed, kept
    while it works, and dropped after a connection error (the next use opens another).
    """

    def __init__(self, db: Database, size: int) -> None:
        self._db = db
        self.size = size
        self._idle: list[asyncpg.Connection] = []
        self._closed = False
        #: connections opened so far (a working lane opens ``size`` of them once)
        self.opened = 0

    async def take(self) -> asyncpg.Connection:
        """An idle connection, or a new one; the caller keeps at most ``size`` taken at once."""
        if self._closed:
            raise DatabaseUnavailable("the database is closed")
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
        conn = await self._db.connect_dedicated()
        self.opened += 1
        return conn

    def give_back(self, conn: asyncpg.Connection, failure: BaseException | None = None) -> None:
        """Keep ``conn`` for the next use, unless it failed for want of a connection."""
        refused = isinstance(failure, asyncpg.PostgresError) and not connection_trouble(failure)
        if self._closed or conn.is_closed() or (failure is not None and not refused):
            conn.terminate()  # lost, or cut mid-statement (cancelled): its state is unknown
        elif len(self._idle) >= self.size:
            conn.terminate()  # more were taken at once than the lane keeps
        else:
            self._idle.append(conn)  # a statement Postgres refused leaves the connection usable

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await conn.close(timeout=2)
            except Exception:  # already gone: nothing to close politely
                conn.terminate()


def _migration_files() -> list[tuple[str, str]]:
    root = resources.files("storage") / "migrations"
    files = [f for f in root.iterdir() if re.match(r"^\d+_.*\.sql$", f.name)]
    return [(f.name, f.read_text(encoding="utf-8")) for f in sorted(files, key=lambda f: f.name)]
