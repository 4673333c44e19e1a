"""Dequeue benchmark: the gateway's inbox claim + turn commit vs a bare SKIP LOCKED delete loop.

N pending inbox rows (real envelopes, spread over ``--conversations``
conversations) are drained by W workers that each do what a dispatch worker does:
``InboxRepo.claim`` (the FIFO-per-conversation claim with lease and token) when it
holds no row, then ``commit_turn`` (the turn's single statement: inbox done,
conversation touched; no agent, no reply), which also claims the worker's next
row, so a busy worker sends one statement per message.
A second gateway row also commits what a real turn writes (one reply chunk in
the outbox and two history messages).

The baseline drains the same number of rows with the same payload, worker count
and pool size from a one-column queue table with the bare minimum:
``DELETE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING payload``.

Everything runs on two databases, alternately so both see the same machine
noise: one with empty tables, one holding ``--history`` completed messages,
bulk-inserted before the runs (inbox rows done, their dedup keys, sent outbox
rows, two history messages each, their conversations; set-based INSERTs, then
VACUUM ANALYZE). Finished rows must not sit in the hot path.

Targets (issue 9): gateway ≥ 0.5 x bare; after the history, gateway no more than
20% slower than before.

    python bench/dequeue.py                      # 200k history, ~2 minutes on 2 cores
    python bench/dequeue.py --history 1000000    # the issue's 1M (several minutes more)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench._common import (
    embedded_server,
    fmt,
    fresh_database,
    loadavg,
    machine,
    no_reset,
    quiet_logging,
    server_version,
    table,
)
from gateway import Reply
from gateway.testing import make_envelope
from storage import ClaimedTurn, Database, PendingChunk, Store, TurnRecord, commit_turn

TEMPLATE = make_envelope(
    "Could you summarise yesterday's meeting notes and list the open action items, please?",
    channel="bench", account="b", conversation="c0", external_id="template",
).to_json()

FILL_PENDING = """
INSERT INTO inbox (id, channel, account, external_id, conversation_key, envelope, received_at)
SELECT u, 'bench', 'b', $2::text || g, 'bench:b:c' || (g % $3) || ':',
       jsonb_set(jsonb_set(jsonb_set(jsonb_set($1::text::jsonb,
           '{id}', to_jsonb(u::text)), '{external_id}', to_jsonb($2::text || g)),
           '{conversation,id}', to_jsonb('c' || (g % $3))), '{reply_to,data,conversation}', to_jsonb('c' || (g % $3))),
       now()
FROM (SELECT g, gen_random_uuid() AS u FROM generate_series(1, $4) g) s
"""
FILL_PENDING_KEYS = """
INSERT INTO inbox_keys (channel, account, key, inbox_id)
SELECT channel, account, external_id, id FROM inbox WHERE status = 'pending'
"""
FILL_BARE = "INSERT INTO bare_queue (payload) SELECT $1::text::jsonb FROM generate_series(1, $2)"
BARE_DEQUEUE = """
DELETE FROM bare_queue WHERE id = (SELECT id FROM bare_queue ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING payload
"""

# History: what finished turns leave behind (inbox row done, its dedup key, a sent reply,
# two history messages), one set-based statement per batch.
HISTORY_CONVERSATIONS = """
INSERT INTO conversations (key, channel, account, external_id, kind, reply_to)
SELECT 'bench:b:h' || c || ':', 'bench', 'b', 'h' || c, 'direct', $2::text::jsonb
FROM generate_series(0, $1 - 1) c ON CONFLICT DO NOTHING
"""
HISTORY = """
WITH ins AS (
    INSERT INTO inbox (id, channel, account, external_id, conversation_key, envelope, status, attempts,
                       received_at, admitted_at, done_at)
    SELECT gen_random_uuid(), 'bench', 'b', 'hist' || g, 'bench:b:h' || (g % $1) || ':', $2::text::jsonb,
           'done', 1, now(), now(), now()
    FROM generate_series($3::bigint, $4::bigint) g
    RETURNING id, channel, account, external_id, conversation_key
), keys AS (
    INSERT INTO inbox_keys (channel, account, key, inbox_id) SELECT channel, account, external_id, id FROM ins
), sent AS (
    INSERT INTO outbox (inbox_id, seq, channel, account, destination, address, body, status, attempts,
                        expires_at, sent_at, platform_message_id)
    SELECT id, 0, channel, account, conversation_key, $5::text::jsonb,
           jsonb_build_object('text', 'Here is the summary you asked for.', 'in_reply_to', id::text),
           'sent', 1, now() + interval '1 day', now(), 'pm-' || external_id
    FROM ins
)
INSERT INTO messages (conversation_key, role, content, inbox_id, meta)
SELECT conversation_key, r.role, r.content, id, '{}'::jsonb
FROM ins, (VALUES ('user', 'Could you summarise yesterday''s meeting notes, please?'),
                  ('assistant', 'Here is the summary you asked for.')) AS r(role, content)
"""


@dataclass
class Run:
    name: str
    phase: str
    messages: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


async def drain(workers: int, total: int, make_step: Callable[[], Step]) -> tuple[float, float]:
    """Run ``workers`` loops, each of its own step, until ``total`` messages are done; (seconds, CPU seconds)."""
    done = 0

    async def loop() -> None:
        nonlocal done
        step = make_step()
        while done < total:
            if await step():
                done += 1
            else:
                await asyncio.sleep(0.001)  # rows left are behind a claimed row of their conversation

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(loop() for _ in range(workers))), 600)
    return time.perf_counter() - t0, time.process_time() - cpu0


class Step:
    async def __call__(self) -> bool:
        raise NotImplementedError


class GatewayStep(Step):
    """One dispatch worker's storage calls, as gateway/dispatch.py makes them: a claim when
    it holds no row, then each commit also claims the worker's next row (one statement)."""

    def __init__(self, store: Store, full: bool) -> None:
        self.store, self.full = store, full
        self.next: ClaimedTurn | None = None

    async def __call__(self) -> bool:
        claim, self.next = self.next, None
        if claim is None:
            claim = await self.store.inbox.claim("bench", 60.0)
        if claim is None:
            return False
        record = TurnRecord()
        if self.full:
            env = claim.envelope
            record.chunks.append(PendingChunk(seq=0, address=env.reply_to, destination=env.conversation_key,
                                              reply=Reply(text="Here is the summary.", in_reply_to=env.id)))
            record.history += [("user", env.text, {"sender": env.sender.id}),
                               ("assistant", "Here is the summary.", {})]
        self.next = await commit_turn(self.store.db, claim, record, ttl_seconds=86_400,
                                      claim_next=("bench", 60.0))
        return True


class BareStep(Step):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def __call__(self) -> bool:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(BARE_DEQUEUE)
        return row is not None


async def run_gateway(store: Store, conn: asyncpg.Connection, args: argparse.Namespace, phase: str,
                      full: bool, tag: str) -> Run:
    await conn.execute(FILL_PENDING, json.dumps(TEMPLATE), tag, args.conversations, args.messages)
    await conn.execute(FILL_PENDING_KEYS)
    await conn.execute("VACUUM ANALYZE inbox")
    seconds, cpu = await drain(args.workers, args.messages, lambda: GatewayStep(store, full))
    name = "gateway claim + commit (reply, history)" if full else "gateway claim + commit"
    return Run(name, phase, args.messages, seconds, cpu)


async def run_bare(pool: asyncpg.Pool, conn: asyncpg.Connection, args: argparse.Namespace, phase: str) -> Run:
    await conn.execute(FILL_BARE, json.dumps(TEMPLATE), args.messages)
    await conn.execute("VACUUM ANALYZE bare_queue")
    seconds, cpu = await drain(args.workers, args.messages, lambda: BareStep(pool))
    return Run("bare DELETE … SKIP LOCKED", phase, args.messages, seconds, cpu)


async def add_history(conn: asyncpg.Connection, count: int) -> float:
    started = time.perf_counter()
    conversations = max(1, count // 20)
    address, template = json.dumps(TEMPLATE["reply_to"]), json.dumps(TEMPLATE)
    await conn.execute(HISTORY_CONVERSATIONS, conversations, address)
    batch = 100_000
    for first in range(1, count + 1, batch):
        last = min(count, first + batch - 1)
        await conn.execute(HISTORY, conversations, template, first, last, address)
        print(f"  history: {last} of {count}", file=sys.stderr, flush=True)
    await conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


class Target:
    """One database with the gateway's tables, a bare queue table, and the clients of both."""

    def __init__(self, url: str, phase: str) -> None:
        self.url, self.phase = url, phase

    async def open(self, args: argparse.Namespace) -> None:
        self.db = Database(self.url, pool_max=args.pool)
        await self.db.connect()  # migrations: the gateway's tables and indexes
        self.store = Store(self.db)
        self.pool = await asyncpg.create_pool(self.url, min_size=args.workers, max_size=args.pool,
                                              reset=no_reset)
        self.conn = await asyncpg.connect(self.url)
        await self.conn.execute("CREATE TABLE bare_queue (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")

    async def close(self) -> None:
        await self.conn.close()
        await self.pool.close()
        await self.db.close()

    async def sizes(self) -> str:
        rows = await self.conn.fetch(
            "SELECT relname, n_live_tup, pg_size_pretty(pg_total_relation_size(relid)) AS size"
            " FROM pg_stat_user_tables WHERE relname IN ('inbox', 'outbox', 'messages', 'inbox_keys')"
            " ORDER BY relname")
        return ", ".join(f"{r['relname']} {r['n_live_tup']} rows {r['size']}" for r in rows)


async def round_trips(t: Target, args: argparse.Namespace) -> dict[str, float]:
    """Statements sent to Postgres per message (each one a round trip), counted with
    asyncpg's query logger on every pooled connection: noise-free, unlike the rates."""
    count = 0

    def log(_record: object) -> None:
        nonlocal count
        count += 1

    async def attach(pool: asyncpg.Pool, on: bool) -> None:
        # hold every connection the pool can open at once, so each gets (or loses) the logger
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        for conn in held:
            (conn.add_query_logger if on else conn.remove_query_logger)(log)
        for conn in held:
            await pool.release(conn)

    await attach(t.pool, True)
    await attach(t.db.pool, True)
    out: dict[str, float] = {}
    for name, run in (("bare DELETE … SKIP LOCKED", run_bare(t.pool, t.conn, args, "count")),
                      ("gateway claim + commit", run_gateway(t.store, t.conn, args, "count", False, "rt-a-")),
                      ("gateway claim + commit (reply, history)",
                       run_gateway(t.store, t.conn, args, "count", True, "rt-b-"))):
        count = 0
        result = await run
        await asyncio.sleep(0.05)  # the logger runs via call_soon
        out[name] = count / result.messages
    # the logger costs time on every query: it must not slow this database's measured runs
    await attach(t.pool, False)
    await attach(t.db.pool, False)
    return out


async def amain(args: argparse.Namespace) -> None:
    server = await asyncio.to_thread(embedded_server, args.data_dir)
    pg = await server_version(server)
    load0 = loadavg()
    runs: list[Run] = []
    # Two databases, measured alternately, so both see the same machine noise: one with
    # empty tables, one holding the history of many finished messages.
    async with fresh_database(server) as url_empty, fresh_database(server) as url_history:
        empty, history = Target(url_empty, "empty"), Target(url_history, "history")
        await empty.open(args)
        await history.open(args)
        try:
            print(f"inserting {args.history} finished messages", file=sys.stderr, flush=True)
            history_seconds = await add_history(history.conn, args.history)
            small = argparse.Namespace(**{**vars(args), "messages": 200})
            for t in (empty, history):  # warm-up: plans and connections, not measured
                await run_bare(t.pool, t.conn, small, "warm")
                await run_gateway(t.store, t.conn, small, "warm", False, "warm-")
            trips = await round_trips(empty, small)
            for i in range(args.repeat):
                for t in ((empty, history) if i % 2 == 0 else (history, empty)):  # no order bias
                    runs.append(await run_bare(t.pool, t.conn, args, t.phase))
                    runs.append(await run_gateway(t.store, t.conn, args, t.phase, False, f"run-{i}a-"))
                    runs.append(await run_gateway(t.store, t.conn, args, t.phase, True, f"run-{i}b-"))
                    for r in runs[-3:]:
                        print(f"  {t.phase}: {r.name}: {r.rate:.0f}/s", file=sys.stderr, flush=True)
            sizes = await history.sizes()
        finally:
            await empty.close()
            await history.close()
    print(report(runs, args, pg, load0, loadavg(), history_seconds, sizes, trips), flush=True)


def report(runs: list[Run], args: argparse.Namespace, pg: str, load0: str, load1: str,
           history_seconds: float, sizes: str, trips: dict[str, float]) -> str:
    names = list(dict.fromkeys(r.name for r in runs))

    def med(name: str, phase: str, attr: str = "rate") -> float:
        values = [getattr(r, attr) if attr == "rate" else r.cpu / r.messages * 1000
                  for r in runs if r.name == name and r.phase == phase]
        return statistics.median(values) if values else float("nan")

    rows = []
    for name in names:
        before, after = med(name, "empty"), med(name, "history")
        rows.append([name, fmt(before, 0), fmt(after, 0), fmt(after / before, 2),
                     fmt(med(name, "empty", "cpu"), 3), fmt(med(name, "history", "cpu"), 3),
                     fmt(trips.get(name, float("nan")), 1)])
    bare, gw = names[0], names[1]
    ratio_empty = med(gw, "empty") / med(bare, "empty")
    ratio_hist = med(gw, "history") / med(bare, "history")
    slowdown = 1 - med(gw, "history") / med(gw, "empty")
    out = table(
        f"soulgate dequeue benchmark — {args.messages} messages per run over {args.conversations} conversations, "
        f"{args.workers} workers, pool {args.pool}, median of {args.repeat}\n"
        f"machine: {machine()}; PostgreSQL {pg} (embedded); load average before {load0}, after {load1}",
        ["run", "msg/s empty", f"msg/s +{args.history // 1000}k", "after/before",
         "CPU ms/msg empty", f"CPU ms/msg +{args.history // 1000}k", "statements/msg"],
        rows,
        [f"history: {args.history} finished messages inserted in {history_seconds:.0f} s; tables at the end: {sizes}",
         "CPU = this process (asyncpg, envelope parsing, repositories); Postgres' own CPU is not in it",
         "statements/msg = round trips to Postgres per message, pool reset queries and BEGIN/COMMIT included"],
    )
    checks = [
        ["gateway / bare, empty tables", fmt(ratio_empty, 2), "≥ 0.5", "yes" if ratio_empty >= 0.5 else "NO"],
        [f"gateway / bare, +{args.history // 1000}k history", fmt(ratio_hist, 2), "≥ 0.5",
         "yes" if ratio_hist >= 0.5 else "NO"],
        ["gateway slowdown after history", f"{slowdown * 100:.0f}%", "≤ 20%", "yes" if slowdown <= 0.2 else "NO"],
    ]
    return out + "\n\n" + table("targets", ["check", "value", "target", "met"], checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--messages", type=int, default=1500, help="messages drained per run")
    parser.add_argument("-w", "--workers", type=int, default=4, help="workers (the gateway's default dispatch)")
    parser.add_argument("--pool", type=int, default=10, help="database pool size (the gateway's default)")
    parser.add_argument("--conversations", type=int, default=1000, help="conversations the messages are spread over")
    parser.add_argument("--history", type=int, default=200_000, help="finished messages added for the second half")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs per phase; tables show medians")
    parser.add_argument("--data-dir", help="embedded Postgres data directory (default: a fresh temp dir)")
    args = parser.parse_args()
    quiet_logging()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
