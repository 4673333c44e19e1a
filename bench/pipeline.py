"""Pipeline benchmark: the gateway's admit → dispatch → deliver path against bare SQL.

N conversations x M messages go through an in-process gateway on embedded
Postgres: a fake channel admits them, a no-op responder plugin answers each
with "ok", and the delivery worker hands the reply to the channel's ``send``.
Latency is measured from the start of ``admit`` to the moment ``send`` is
called. The same load then runs through a baseline that issues only the SQL
such a pipeline cannot do without (written out below), with the same worker
counts and pool size and no gateway logic: no dedup keys, no NOTIFY (in-process
events wake its workers), no per-conversation FIFO check, no plugin calls, no
history, audit or conversation rows, no rate limits. The ratio is what the
gateway's guarantees and features cost on this machine.

Load shapes (``--mode``): ``closed`` (default) — each conversation sends its
next message when the reply to the previous one arrives, like a person
waiting for an answer, so latency is the pipeline's own; ``burst`` — every
message is admitted at once, so messages/s is the drain rate and latency is
mostly queueing.

    python bench/pipeline.py                      # ~1 minute on 2 cores
    python bench/pipeline.py -n 50 -m 100 -w 8    # larger
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncpg

from gateway import (
    Adapter,
    AdapterContext,
    Envelope,
    Reply,
    ReplyAddress,
    SendResult,
    Services,
    Turn,
    TurnResult,
    hookimpl,
)
from gateway.config import config_from_mapping
from gateway.runtime import Gateway
from gateway.testing import make_envelope
from storage import Database, create_database, drop_database, start_embedded

CHANNEL, ACCOUNT = "bench", "b"


# -- load generator (shared by both systems) ---------------------------------------------------


class Tracker:
    """Maps a message id to the future its delivery resolves with the delivery time."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[float]] = {}

    def expect(self, message_id: str) -> asyncio.Future[float]:
        fut = asyncio.get_running_loop().create_future()
        self.waiting[message_id] = fut
        return fut

    def delivered(self, message_id: str | None) -> None:
        fut = self.waiting.pop(message_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())


class System(Protocol):
    tracker: Tracker

    async def admit(self, envelope: Envelope) -> None: ...


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    latencies: list[float]
    admits: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def pct(self, q: float, admits: bool = False) -> float:
        """The ``q`` quantile in milliseconds (of admit→delivered, or of the admit call alone)."""
        ordered = sorted(self.admits if admits else self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def drive(system: System, name: str, conversations: int, messages: int, mode: str, tag: str) -> Result:
    latencies: list[float] = []
    admits: list[float] = []

    async def one(c: int, m: int) -> asyncio.Future[float]:
        env = make_envelope(
            f"message {m}", channel=CHANNEL, account=ACCOUNT, conversation=f"{tag}-c{c}",
            external_id=f"{tag}-{c}-{m}",
        )
        fut = system.tracker.expect(env.id)
        started = time.perf_counter()
        await system.admit(env)
        admits.append(time.perf_counter() - started)
        fut.add_done_callback(lambda f: latencies.append(f.result() - started))
        return fut

    async def conversation(c: int) -> None:
        futures = []
        for m in range(messages):
            fut = await one(c, m)
            if mode == "closed":
                await fut
            else:
                futures.append(fut)
        await asyncio.gather(*futures)

    begin = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(conversation(c) for c in range(conversations))), 600)
    seconds = time.perf_counter() - begin
    await asyncio.sleep(0)  # let the last done-callbacks run
    return Result(name, conversations * messages, seconds, latencies, admits)


# -- the gateway ---------------------------------------------------------------------------------


class BenchAdapter(Adapter):
    channel = CHANNEL

    def __init__(self, tracker: Tracker) -> None:
        super().__init__(ACCOUNT)
        self.tracker = tracker
        self.ctx: AdapterContext | None = None

    async def start(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        self.tracker.delivered(reply.in_reply_to)
        return SendResult(platform_message_id=None)


class NoopResponder:
    name = "bench-noop"

    async def respond(self, turn: Turn) -> TurnResult:
        return TurnResult(replies=[Reply(text="ok")])


class BenchPlugin:
    """Registered like any plugin; wins over the built-in default route (which is trylast)."""

    @hookimpl
    def soulgate_responder(self, services: Services) -> NoopResponder:
        return NoopResponder()


class GatewaySystem:
    def __init__(self, url: str, workers: int, pool: int) -> None:
        self.tracker = Tracker()
        config = config_from_mapping({
            "admin": {"enabled": False},
            "http": {"enabled": False},
            "database": {"pool_max": pool},
            "workers": {"dispatch": workers, "delivery": workers},
        }, env={})
        self.gw = Gateway(config, extra_plugins=[("bench", BenchPlugin())], entry_points=False, database_url=url)
        self.adapter = BenchAdapter(self.tracker)
        self.gw.add_adapter(self.adapter)

    async def start(self) -> None:
        await self.gw.start()

    async def stop(self) -> None:
        await self.gw.stop()

    async def admit(self, envelope: Envelope) -> None:
        assert self.adapter.ctx is not None
        await self.adapter.ctx.admit(envelope)


# -- the baseline: the same rows moved by bare SQL -----------------------------------------------

ADMIT = """
INSERT INTO inbox (id, channel, account, external_id, conversation_key, envelope, received_at)
VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT DO NOTHING
"""
CLAIM_INBOX = """
UPDATE inbox SET status = 'claimed', attempts = attempts + 1, claim_token = $1, claimed_by = $2,
       lease_until = clock_timestamp() + interval '60 seconds'
WHERE id = (SELECT id FROM inbox WHERE status = 'pending' ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, conversation_key, envelope
"""
INSERT_OUTBOX = """
INSERT INTO outbox (inbox_id, seq, channel, account, destination, address, body, expires_at)
VALUES ($1, 0, $2, $3, $4, $5, $6, now() + interval '1 day')
"""
INBOX_DONE = """
UPDATE inbox SET status = 'done', done_at = now(), lease_until = NULL WHERE id = $1 AND claim_token = $2
"""
CLAIM_OUTBOX = """
UPDATE outbox SET status = 'sending', attempts = attempts + 1, claim_token = $1,
       lease_until = clock_timestamp() + interval '60 seconds'
WHERE id = (SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= clock_timestamp()
            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, inbox_id, body
"""
OUTBOX_SENT = """
UPDATE outbox SET status = 'sent', sent_at = now(), lease_until = NULL WHERE id = $1 AND claim_token = $2
"""


async def _json_codecs(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class BaselineSystem:
    def __init__(self, url: str, workers: int, pool: int) -> None:
        self.tracker = Tracker()
        self.url, self.workers, self.pool_size = url, workers, pool
        self.inbox_ready, self.outbox_ready = asyncio.Event(), asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        db = Database(self.url)  # only to create the same tables and indexes (migrations)
        await db.connect()
        await db.close()
        self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, init=_json_codecs)
        for i in range(self.workers):
            self.tasks.append(asyncio.create_task(self._loop(self.inbox_ready, self._dispatch_one, f"d{i}")))
            self.tasks.append(asyncio.create_task(self._loop(self.outbox_ready, self._deliver_one, f"s{i}")))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pool.close()

    async def admit(self, envelope: Envelope) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                ADMIT, uuid.UUID(envelope.id), envelope.channel, envelope.account, envelope.external_id,
                envelope.conversation_key, envelope.to_json(),
            )
        self.inbox_ready.set()

    async def _loop(self, wake: asyncio.Event, step: Callable[[str], Awaitable[bool]], name: str) -> None:
        while True:
            wake.clear()
            if not await step(name):
                try:
                    await asyncio.wait_for(wake.wait(), 2.0)
                except TimeoutError:
                    pass

    async def _dispatch_one(self, name: str) -> bool:
        token = uuid.uuid4()
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(CLAIM_INBOX, token, name)
            if row is None:
                return False
            env: dict[str, Any] = row["envelope"]
            body = {"text": "ok", "attachments": [], "in_reply_to": str(row["id"]), "meta": {}}
            async with conn.transaction():
                await conn.execute(
                    INSERT_OUTBOX, row["id"], env["channel"], env["account"], row["conversation_key"],
                    env["reply_to"], body,
                )
                await conn.execute(INBOX_DONE, row["id"], token)
        self.outbox_ready.set()
        return True

    async def _deliver_one(self, name: str) -> bool:
        token = uuid.uuid4()
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(CLAIM_OUTBOX, token)
            if row is None:
                return False
            self.tracker.delivered(row["body"]["in_reply_to"])  # the "send"
            await conn.execute(OUTBOX_SENT, row["id"], token)
        return True


# -- running and reporting -----------------------------------------------------------------------


async def measure(
    make: Callable[[str], GatewaySystem | BaselineSystem], server: str, name: str, args: argparse.Namespace
) -> Result:
    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    url = await create_database(server, db_name)
    system = make(url)
    try:
        await system.start()
        await drive(system, name, args.workers, 2, args.mode, "warmup")
        result = await drive(system, name, args.conversations, args.messages, args.mode, "run")
        print(f"{name}: {result.rate:.1f} msg/s", file=sys.stderr, flush=True)
        return result
    finally:
        await system.stop()
        await drop_database(server, db_name)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {platform.system()}"


def table(results: list[Result], args: argparse.Namespace, pg: str) -> str:
    rows = [f"soulgate pipeline benchmark — {args.conversations} conversations x {args.messages} messages, "
            f"{args.mode} loop, {args.workers} dispatch + {args.workers} delivery workers, pool {args.pool}",
            f"machine: {machine()}; {pg}", ""]
    head = f"{'run':<22}{'messages':>9}{'seconds':>9}{'msg/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'admit p50':>11}"
    rows += [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r.name:<22}{r.messages:>9}{r.seconds:>9.2f}{r.rate:>9.1f}{r.pct(0.5):>9.2f}"
                    f"{r.pct(0.99):>9.2f}{r.pct(0.5, admits=True):>11.2f}")
    by = {r.name: r for r in results}
    gws = [r for n, r in by.items() if n.startswith("gateway")]
    bases = [r for n, r in by.items() if n.startswith("baseline")]
    gw_rate = statistics.median(r.rate for r in gws)
    base_rate = statistics.median(r.rate for r in bases)
    rows.append("-" * len(head))
    rows.append(
        f"{'gateway / baseline':<22}{'':>9}{'':>9}{gw_rate / base_rate:>9.2f}"
        f"{statistics.median(r.pct(0.5) for r in gws) / statistics.median(r.pct(0.5) for r in bases):>9.2f}"
        f"{statistics.median(r.pct(0.99) for r in gws) / statistics.median(r.pct(0.99) for r in bases):>9.2f}"
        f"{statistics.median(r.pct(0.5, True) for r in gws) / statistics.median(r.pct(0.5, True) for r in bases):>11.2f}"
    )
    rows.append("(p50/p99: admit → send called; admit p50: until admit returned, i.e. when a webhook could ack."
                " Ratios: msg/s higher is better, latency lower is better)")
    return "\n".join(rows)


async def amain(args: argparse.Namespace, data_dir: Path) -> None:
    server = await asyncio.to_thread(start_embedded, data_dir)
    conn = await asyncpg.connect(server)
    pg = (await conn.fetchval("SHOW server_version")).split()[0]
    await conn.close()
    results: list[Result] = []
    for i in range(args.repeat):
        suffix = f" #{i + 1}" if args.repeat > 1 else ""
        results.append(await measure(lambda url: BaselineSystem(url, args.workers, args.pool),
                                     server, f"baseline SQL{suffix}", args))
        results.append(await measure(lambda url: GatewaySystem(url, args.workers, args.pool),
                                     server, f"gateway{suffix}", args))
    # flushed now: at exit pgserver takes a machine-wide lock to stop the server, which
    # can wait behind another process's initdb
    print(table(results, args, f"PostgreSQL {pg} (embedded, pgserver)"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--conversations", type=int, default=20)
    parser.add_argument("-m", "--messages", type=int, default=25, help="messages per conversation")
    parser.add_argument("-w", "--workers", type=int, default=4, help="dispatch and delivery workers each")
    parser.add_argument("--pool", type=int, default=10, help="database pool size (the gateway's default)")
    parser.add_argument("--mode", choices=["closed", "burst"], default="closed")
    parser.add_argument("--repeat", type=int, default=1, help="alternate runs; the ratio uses medians")
    parser.add_argument("--data-dir", help="embedded Postgres data directory (default: a fresh temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    if args.data_dir:
        data_dir = Path(args.data_dir)
    else:
        root = Path(tempfile.mkdtemp(prefix="soulgate-bench-"))
        root.chmod(0o755)  # pgserver may run Postgres as its own user when we are root
        atexit.register(shutil.rmtree, root, True)  # registered first, so it runs after pgserver's stop
        data_dir = root / "pgdata"
    asyncio.run(amain(args, data_dir))


if __name__ == "__main__":
    main()
