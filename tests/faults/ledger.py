"""The books of a fault test: what was sent in, what the platform received, what the tables say.

Every inbound message of a fault test lives in a conversation of its own, so the
replies a fake platform received in that conversation are exactly the replies to
that message, whatever their text (an apology for a failed model counts as the
answer too). :func:`reconcile` then holds each message to the delivery contract:

- it was admitted exactly once (one inbox row), and its turn finished;
- its reply was stored (at least one outbox row) and nothing is still queued;
- the platform received every chunk whose row is ``sent``, nothing more, except
  that a row parked as ``unknown`` (a ``never_twice`` channel whose send was cut
  off mid-flight) may or may not have reached the platform;
- a ``dead`` row spent its whole retry budget first, or the platform refused it for
  good (a permanent error: the user blocked the bot, the channel is gone).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

__all__ = ["Books", "Thread", "load_threads", "reconcile", "settled"]


@dataclass
class Thread:
    """One conversation's rows: its inbox rows and the chunks of their replies."""

    conversation: str
    inbox: list[str] = field(default_factory=list)  # statuses
    chunks: list[dict[str, Any]] = field(default_factory=list)  # outbox id, status, attempts, error


@dataclass
class Books:
    problems: list[str]
    answered: int = 0  # messages whose every chunk is confirmed sent
    parked: int = 0  # messages with a chunk parked as 'unknown' (never_twice after a cut-off send)
    parked_delivered: int = 0  # ... of which the platform did receive the chunk
    dead: int = 0  # messages with a dead-lettered chunk
    dead_rows: list[dict[str, Any]] = field(default_factory=list)
    unknown_rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"answered={self.answered} parked_unknown={self.parked} "
                f"(of which delivered={self.parked_delivered}) dead={self.dead}")


async def load_threads(database_url: str, channel: str, key: str = "conversation") -> dict[str, Thread]:
    """Inbox and outbox rows of ``channel``, by conversation id (``key="sender"``: by sender id,
    for channels such as email where the sender is what tells the test's messages apart)."""
    if key not in ("conversation", "sender"):
        raise ValueError(f"key must be 'conversation' or 'sender', not {key!r}")
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT i.id AS inbox_id, i.status AS inbox_status,"
            f" (i.envelope::jsonb) -> '{key}' ->> 'id' AS conversation,"
            " o.id AS outbox_id, o.seq, o.status, o.attempts, o.last_error"
            " FROM inbox i LEFT JOIN outbox o ON o.inbox_id = i.id"
            " WHERE i.channel = $1 ORDER BY i.seq, o.seq",
            channel,
        )
    finally:
        await conn.close()
    threads: dict[str, Thread] = {}
    seen: set[Any] = set()
    for r in rows:
        thread = threads.setdefault(r["conversation"], Thread(r["conversation"]))
        if r["inbox_id"] not in seen:
            seen.add(r["inbox_id"])
            thread.inbox.append(r["inbox_status"])
        if r["outbox_id"] is not None:
            thread.chunks.append({"id": r["outbox_id"], "seq": r["seq"], "status": r["status"],
                                  "attempts": r["attempts"], "error": r["last_error"]})
    return threads


def reconcile(
    expected: Iterable[str],
    delivered: Mapping[str, int],
    threads: Mapping[str, Thread],
    *,
    max_attempts: int,
    label: str = "",
) -> Books:
    """Hold every expected conversation (one inbound message each) to the delivery contract."""
    books = Books(problems=[])
    expected = list(expected)
    wanted = set(expected)
    for conv in expected:
        thread = threads.get(conv)
        got = delivered.get(conv, 0)
        where = f"{label}{conv}"
        if thread is None or not thread.inbox:
            books.problems.append(f"{where}: never admitted (lost); platform got {got} replies")
            continue
        if len(thread.inbox) != 1:
            books.problems.append(f"{where}: admitted {len(thread.inbox)} times")
        if any(s not in ("done", "failed") for s in thread.inbox):
            books.problems.append(f"{where}: turn not finished (inbox {thread.inbox})")
        statuses = Counter(c["status"] for c in thread.chunks)
        if not thread.chunks:
            books.problems.append(f"{where}: no reply stored; platform got {got}")
            continue
        if statuses["pending"] or statuses["sending"]:
            books.problems.append(f"{where}: reply still queued ({dict(statuses)})")
        for c in thread.chunks:
            if c["status"] == "dead":
                books.dead_rows.append({**c, "conversation": conv})
                if c["attempts"] < max_attempts and not (c["error"] or "").startswith("PermanentDeliveryError"):
                    books.problems.append(
                        f"{where}: chunk {c['seq']} dead-lettered after {c['attempts']} of {max_attempts} "
                        f"attempts: {c['error']}")
            elif c["status"] == "unknown":
                books.unknown_rows.append({**c, "conversation": conv})
        low, high = statuses["sent"], statuses["sent"] + statuses["unknown"]
        if got < low:
            books.problems.append(f"{where}: platform got {got} of {low} sent chunks (lost)")
        elif got > high:
            books.problems.append(f"{where}: platform got {got} chunks, only {high} may have gone (duplicated)")
        if statuses["dead"]:
            books.dead += 1
        elif statuses["unknown"]:
            books.parked += 1
            books.parked_delivered += got > low
        else:
            books.answered += 1
    for conv, got in delivered.items():
        if conv not in wanted and got:
            books.problems.append(f"{label}{conv}: {got} replies in a conversation nobody wrote in")
    return books


async def settled(database_url: str, expected: int, within: float) -> str:
    """Wait until every message is admitted and nothing is left to do; the last counts seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM inbox) AS admitted,"
                " (SELECT count(*) FROM inbox WHERE status IN ('pending', 'claimed')) AS live,"
                " (SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')) AS queued")
            state = f"admitted {row['admitted']}/{expected}, live turns {row['live']}, queued sends {row['queued']}"
            if row["admitted"] >= expected and not row["live"] and not row["queued"]:
                return state
            if loop.time() > deadline:
                return "NOT SETTLED: " + state
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
