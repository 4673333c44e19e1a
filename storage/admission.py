"""Admissions that arrive together go to Postgres together.

Each webhook's 200 waits for its event to be committed, and a commit costs a round
trip, a transaction and a WAL flush. When webhooks arrive faster than one admission
takes, the ones that come while ``max_in_flight`` admissions are already on their
way wait for the next free slot and then share one statement
(``soulgate_admit_batch``, migration 009). Nothing waits on a timer: an admission
with a free slot leaves at once, so a quiet gateway admits one event per statement
as before, and a busy one sends fewer, larger statements.

A group that fails (a row Postgres refuses, say a key too long for its index) is
retried one event at a time, so only the bad event gets the error; a dropped
connection fails every event of the group, and each webhook then gets the error it
would have had alone (the platform retries; the dedup keys make that safe).

A statement that takes longer than ``timeout`` fails its group the same way, and its
connection is dropped. All admissions of an instance go through two connections, so
without a limit a connection that silently died (a network partition sends no reset)
would hold every webhook until TCP gave up, many minutes later; with it, the lane
opens a fresh connection and the platforms' retries get in.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .database import ConnectionLane, Database, connection_trouble

__all__ = ["Admission", "AdmissionBatcher"]


@dataclass(frozen=True, slots=True)
class Admission:
    """One event, ready to store: text already cleaned for Postgres, keys distinct."""

    id: uuid.UUID
    channel: str
    account: str
    keys: Sequence[str]
    external_id: str
    conversation_key: str
    envelope_json: str
    received_at: datetime


_SINGLE = "SELECT soulgate_admit($1, $2, $3, $4::text[], $5, $6, $7::text::jsonb, $8)"
_GROUP = ("SELECT admitted_id, owner_id FROM soulgate_admit_batch("
          "$1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],"
          " $8::int[], $9::text[])")


class AdmissionBatcher:
    """Sends admissions, grouping the ones that queue behind ``max_in_flight`` others.

    ``admit`` returns the id of the row that owns the event (its own id when it was
    stored now) or None when a concurrent owner took its key back (the caller lets the
    platform retry). ``on_stored`` runs once per statement that stored something.
    """

    def __init__(self, db: Database, on_stored: Callable[[], None], *, max_in_flight: int = 2,
                 max_group: int = 100, timeout: float = 10.0) -> None:
        if max_in_flight < 1 or max_group < 1:
            raise ValueError("max_in_flight and max_group must be at least 1")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._db = db
        self._lane: ConnectionLane | None = None  # opened by the first admission, not by a repo built
        # for another query (storage/turns.py builds one to reclaim a row)
        self._on_stored = on_stored
        self._max_in_flight = max_in_flight
        self._max_group = max_group
        # Slack wants its 200 within 3 s, Teams retries after about 15: an admission slower than
        # this helps nobody, and a hung connection must not hold the lane for longer
        self._timeout = timeout
        self._waiting: deque[tuple[Admission, asyncio.Future[uuid.UUID | None]]] = deque()
        self._senders: set[asyncio.Task[None]] = set()  # strong references only
        # counted by the senders themselves: a sender that found nothing more to send has left
        # the count in the same step (a done-callback would leave a window in which a new
        # admission sees every slot taken by senders that have already finished)
        self._sending = 0
        #: statements sent and events they carried, for tests and the benchmarks
        self.statements = 0
        self.events = 0

    async def admit(self, admission: Admission) -> uuid.UUID | None:
        future: asyncio.Future[uuid.UUID | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((admission, future))
        if self._sending < self._max_in_flight:
            self._sending += 1
            task = asyncio.create_task(self._send_while_waiting(), name="soulgate-admission")
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        # a webhook whose client left cancels only its own future: the group's statement goes on,
        # and its outcome for this event is dropped (the platform's retry finds it stored)
        return await future

    async def _send_while_waiting(self) -> None:
        try:
            while self._waiting:
                group = [self._waiting.popleft() for _ in range(min(self._max_group, len(self._waiting)))]
                try:
                    await self._send(group)
                except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
                    for _, future in group:
                        _settle(future, exc=exc)
                    raise
        finally:
            self._sending -= 1

    async def _send(self, group: list[tuple[Admission, asyncio.Future[uuid.UUID | None]]]) -> None:
        self.statements += 1
        self.events += len(group)
        try:
            if len(group) == 1:
                owners = [await self._one(group[0][0])]
            else:
                owners = await self._group([a for a, _ in group])
        except Exception as exc:
            if len(group) == 1 or connection_trouble(exc):
                for _, future in group:
                    _settle(future, exc=exc)
                return
            # one event Postgres refused must not fail the others: alone, each gets its own answer
            # (one after the other, in arrival order, on this sender's lane connection)
            for item in group:
                await self._send([item])
            return
        if any(owner == a.id for (a, _), owner in zip(group, owners, strict=True)):
            self._on_stored()
        for (_, future), owner in zip(group, owners, strict=True):
            _settle(future, owner)

    async def _one(self, a: Admission) -> uuid.UUID | None:
        owner: uuid.UUID | None = await self._on_lane(
            "fetchval", _SINGLE, a.id, a.channel, a.account, list(a.keys), a.external_id, a.conversation_key,
            a.envelope_json, a.received_at)
        return owner

    async def _group(self, group: list[Admission]) -> list[uuid.UUID | None]:
        key_rows = [row for row, a in enumerate(group, start=1) for _ in a.keys]
        keys = [k for a in group for k in a.keys]
        rows = await self._on_lane(
            "fetch", _GROUP, [a.id for a in group], [a.channel for a in group], [a.account for a in group],
            [a.external_id for a in group], [a.conversation_key for a in group],
            [a.envelope_json for a in group], [a.received_at for a in group], key_rows, keys)
        owners = {r["admitted_id"]: r["owner_id"] for r in rows}
        return [owners[a.id] for a in group]

    async def _on_lane(self, method: str, *args: Any) -> Any:
        """One statement on a connection of the admission lane (at most ``max_in_flight`` senders
        run, so the lane never needs more connections than that)."""
        if self._lane is None:
            self._lane = self._db.lane(self._max_in_flight)
        lane = self._lane
        conn = await lane.take()
        try:
            result = await getattr(conn, method)(*args, timeout=self._timeout)
        except BaseException as exc:
            lane.give_back(conn, exc)
            raise
        lane.give_back(conn)
        return result


def _settle(future: asyncio.Future[uuid.UUID | None], owner: uuid.UUID | None = None, *,
            exc: BaseException | None = None) -> None:
    if future.done():  # its webhook gave up waiting
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    elif exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(owner)

