"""Turn latency benchmark: the time the gateway itself adds to a turn, with an instant LLM.

A signed Slack webhook goes in, the SOUL agent asks the fake LLM (which answers
at once), and the reply goes out through slack-sdk to the fake Slack. The fake
LLM and fake Slack run in their own process (bench/_fakes.py) and note when
each request arrived; the load generator (bench/_loadgen.py, another process)
notes when each webhook left. All three use the wall clock of one machine.
Per turn:

- inbound leg = LLM request received - webhook sent (verify, admit, ack,
  NOTIFY, claim, history, prompt, litellm);
- outbound leg = Slack post received - LLM answer sent (litellm parsing, reply
  transforms, render, commit, NOTIFY, delivery claim, rate limit, slack-sdk);
- gateway-owned = inbound + outbound (the LLM's own time left out).

The reference pipeline does the same job with nothing but what it cannot do
without: an aiohttp handler inserting the raw body into a table and answering
200, workers (as many as the gateway's dispatch workers) taking rows with
``DELETE … FOR UPDATE SKIP LOCKED RETURNING`` (woken in-process), one raw
aiohttp POST to the LLM, one raw aiohttp POST to ``chat.postMessage``.

Both get the same open-loop offered rate. Target (issue 9): gateway-owned p50
and p99 ≤ 2x the reference's.

    python bench/turn_latency.py                  # ~2 minutes on 2 cores
    python bench/turn_latency.py --rate 20 --seconds 30 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg
from aiohttp import web

from bench._common import (
    FakesProcess,
    embedded_server,
    fmt,
    fresh_database,
    loadavg,
    machine,
    no_reset,
    pct,
    quiet_logging,
    run_load,
    scratch_dir,
    server_version,
    table,
)
from gateway.config import config_from_mapping
from gateway.http import bound_port
from gateway.runtime import Gateway

PATH = "/slack/main/events"
_ID = re.compile(r"msg (\S+-\d+)")


@dataclass
class Turns:
    name: str
    offered: int
    acked: int
    inbound: list[float]
    outbound: list[float]
    owned: list[float]
    end_to_end: list[float]
    ack: list[float]
    cpu: float

    @property
    def complete(self) -> int:
        return len(self.owned)


# -- the reference pipeline --------------------------------------------------------------------


@asynccontextmanager
async def reference(url: str, fakes: dict[str, Any], workers: int, pool_max: int) -> AsyncIterator[str]:
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE ref_queue (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
    await conn.close()
    pool = await asyncpg.create_pool(url, min_size=workers, max_size=pool_max, reset=no_reset)
    ready = asyncio.Event()
    session = aiohttp.ClientSession()
    llm_url = fakes["llm"] + "/chat/completions"
    post_url = fakes["slack"] + "chat.postMessage"
    auth = {"Authorization": f"Bearer {fakes['token']}"}

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        await pool.execute("INSERT INTO ref_queue (payload) VALUES ($1)", body.decode())
        ready.set()
        return web.Response(status=200)

    async def worker() -> None:
        while True:
            ready.clear()
            row = await pool.fetchrow("DELETE FROM ref_queue WHERE id = (SELECT id FROM ref_queue ORDER BY id"
                                      " LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING payload")
            if row is None:
                with suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), 1.0)
                continue
            event = json.loads(row["payload"])["event"]
            request = {"model": "bench-model", "messages": [{"role": "user", "content": event["text"]}]}
            async with session.post(llm_url, json=request, headers={"Authorization": "Bearer sk-bench"}) as r:
                answer = (await r.json())["choices"][0]["message"]["content"]
            async with session.post(post_url, json={"channel": event["channel"], "text": answer},
                                    headers=auth) as r:
                await r.read()

    app = web.Application()
    app.router.add_post(PATH, handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}{PATH}"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await session.close()
        await pool.close()


# -- the gateway -----------------------------------------------------------------------------


@asynccontextmanager
async def gateway(url: str, fakes: dict[str, Any], workers: int, pool_max: int, soul_dir: Path
                  ) -> AsyncIterator[str]:
    config = config_from_mapping({
        "admin": {"enabled": False},
        "http": {"port": 0},
        "database": {"pool_max": pool_max},
        "workers": {"dispatch": workers, "delivery": workers},
        "agents": {"soul_dir": str(soul_dir)},
        "models": {"default": {"model": "openai/bench-model", "api_base": fakes["llm"], "api_key": "sk-bench"}},
        "channels": {"slack": {"main": {
            "bot_token": fakes["token"], "signing_secret": fakes["secret"], "api_base_url": fakes["slack"],
        }}},
    }, env={})
    gw = Gateway(config, entry_points=False, database_url=url)
    await gw.start()
    try:
        from agents.llm import load_litellm

        await load_litellm()
        yield f"http://127.0.0.1:{gw.public_port}{PATH}"
    finally:
        await gw.stop()


# -- one measured run ----------------------------------------------------------------------------


async def wait_posts(fakes: FakesProcess, expected: int, within: float) -> dict[str, Any]:
    """Collect dumps until ``expected`` chat.postMessage calls have arrived (or ``within`` seconds pass)."""
    merged: dict[str, list[Any]] = {"llm": [], "slack": []}
    deadline = time.monotonic() + within
    while True:
        got = await fakes.dump()
        merged["llm"] += got["llm"]
        merged["slack"] += [c for c in got["slack"] if c[0] == "chat.postMessage"]
        if len(merged["slack"]) >= expected or time.monotonic() > deadline:
            return merged
        await asyncio.sleep(0.25)


async def measure(name: str, url: str, fakes: FakesProcess, args: argparse.Namespace, tag: str) -> Turns:
    common = {"url": url, "secret": fakes.info["secret"], "channels": args.channels}
    await run_load({**common, "mode": "closed", "concurrency": 4, "count": 40, "tag": f"warm{tag}"})
    await wait_posts(fakes, 40, 30)
    profiler = cProfile.Profile() if args.profile and name == "gateway" else None
    cpu0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    load = await run_load({**common, "mode": "open", "rate": args.rate, "duration": args.seconds, "tag": tag})
    acked = [i for i, s in zip(load["index"], load["status"], strict=True) if s == 200]
    seen = await wait_posts(fakes, len(acked), 60)
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{args.profile}.{tag}")
    sent = dict(zip(load["index"], load["send"], strict=True))
    llm: dict[int, tuple[float, float]] = {}
    for text, received, answered in seen["llm"]:
        m = _ID.search(text)
        if m and m.group(1).startswith(f"{tag}-"):
            llm[int(m.group(1).rsplit("-", 1)[1])] = (received, answered)
    posted: dict[int, float] = {}
    for _method, text, received in seen["slack"]:
        m = _ID.search(text)
        if m and m.group(1).startswith(f"{tag}-"):
            posted[int(m.group(1).rsplit("-", 1)[1])] = received
    inbound, outbound, owned, e2e = [], [], [], []
    for i in acked:
        if i in llm and i in posted:
            a = llm[i][0] - sent[i]
            b = posted[i] - llm[i][1]
            inbound.append(a * 1000)
            outbound.append(b * 1000)
            owned.append((a + b) * 1000)
            e2e.append((posted[i] - sent[i]) * 1000)
    ack = [lat * 1000 for lat, s in zip(load["latency"], load["status"], strict=True) if s == 200]
    turns = Turns(name, len(load["status"]), len(acked), inbound, outbound, owned, e2e, ack, cpu)
    print(f"  {name}: {turns.complete}/{turns.offered} turns, owned p50 {pct(owned, 0.5):.1f} ms "
          f"p99 {pct(owned, 0.99):.1f} ms", file=sys.stderr, flush=True)
    return turns


async def amain(args: argparse.Namespace) -> None:
    server = await asyncio.to_thread(embedded_server, args.data_dir)
    pg = await server_version(server)
    fakes = FakesProcess(llm_latency=0.0)
    soul_dir = scratch_dir("soulgate-bench-souls-")  # empty: the built-in agent
    load0 = loadavg()
    results: list[Turns] = []
    try:
        for i in range(args.repeat):
            async with fresh_database(server) as db, reference(db, fakes.info, args.workers, args.pool) as url:
                results.append(await measure("reference", url, fakes, args, f"ref{i}"))
            async with fresh_database(server) as db, gateway(db, fakes.info, args.workers, args.pool,
                                                             soul_dir) as url:
                results.append(await measure("gateway", url, fakes, args, f"gw{i}"))
    finally:
        fakes.close()
    print(report(results, args, pg, load0, loadavg()), flush=True)


def report(results: list[Turns], args: argparse.Namespace, pg: str, load0: str, load1: str) -> str:
    rows = []
    for r in results:
        rows.append([r.name, f"{r.complete}/{r.offered}", fmt(pct(r.inbound, 0.5)), fmt(pct(r.inbound, 0.99)),
                     fmt(pct(r.outbound, 0.5)), fmt(pct(r.outbound, 0.99)), fmt(pct(r.owned, 0.5)),
                     fmt(pct(r.owned, 0.99)), fmt(pct(r.ack, 0.99)),
                     fmt(r.cpu / r.complete * 1000 if r.complete else float("nan"), 2)])

    def med(name: str, q: float) -> float:
        return statistics.median(pct(r.owned, q) for r in results if r.name == name)

    checks = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        ratio = med("gateway", q) / med("reference", q)
        checks.append([f"gateway-owned {label} / reference", fmt(ratio, 2), "≤ 2", "yes" if ratio <= 2 else "NO"])
    out = table(
        f"soulgate turn latency — instant fake LLM, {args.rate:g} webhooks/s for {args.seconds:g} s (open loop), "
        f"{args.channels} DM channels, {args.workers} workers, pool {args.pool}\n"
        f"machine: {machine()}; PostgreSQL {pg} (embedded); load average before {load0}, after {load1}",
        ["run", "turns", "in p50", "in p99", "out p50", "out p99", "owned p50", "owned p99", "ack p99",
         "CPU ms/turn"],
        rows,
        ["ms; in = webhook sent → LLM request received, out = LLM answer sent → Slack post received, "
         "owned = in + out; CPU = this process per turn (server side only)"],
    )
    return out + "\n\n" + table("targets (medians over runs)", ["check", "ratio", "target", "met"], checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5.0, help="webhooks per second (open loop)")
    parser.add_argument("--seconds", type=float, default=16.0, help="length of each measured run")
    parser.add_argument("--channels", type=int, default=50, help="DM channels the messages are spread over")
    parser.add_argument("-w", "--workers", type=int, default=4, help="dispatch/delivery workers (and reference)")
    parser.add_argument("--pool", type=int, default=10, help="database pool size (the gateway's default)")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs; the targets use medians")
    parser.add_argument("--data-dir", help="embedded Postgres data directory (default: a fresh temp dir)")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile the gateway's measured runs (this process) into FILE.<tag>")
    args = parser.parse_args()
    quiet_logging()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
