"""Ingress benchmark: signed Slack webhooks → verified, admitted and acknowledged.

The gateway runs in this process with the real Slack adapter (HTTP mode) on
its public listener; the fake Slack (for auth.test and the replies) and the
fake LLM run in a process of their own (bench/_fakes.py), and so does the load
generator (bench/_loadgen.py), which sends Events API ``event_callback``
bodies signed exactly as Slack signs them. A 200 from the gateway means the
event is committed to the inbox.

The baseline is a bare aiohttp + asyncpg handler on the same Postgres server
that reads the body, inserts it into a one-column table and answers 200 (no
signature check, no parsing, no dedup, no NOTIFY), with the same pool size.

Phases (each system on a fresh database, after a short warm-up):

1. maximum throughput: a closed loop of ``--concurrency`` senders, bare vs the
   gateway in ``--role ingress`` (admission only, like the baseline);
2. ack latency at half the lower of the two maxima, in an open loop (requests
   leave on schedule whatever the server does), bare vs gateway ingress;
3. the same offered load against a gateway in role ``all`` whose dispatch
   workers are saturated with slow LLM turns: (a) a responder plugin that
   sleeps ``--slow`` seconds per turn, (b) the real SOUL agent through litellm
   against the fake LLM answering after ``--llm-latency`` seconds, with
   ``--agent-workers`` dispatch workers (LLM client CPU in the same process);
4. the same agent turns in a separate ``soulgate run --role worker`` process,
   with this process in role ingress (the split deployment of process roles).

Targets (issue 9): throughput ≥ 0.8 x bare; ack p99 at half load ≤ 2 x bare's
p99; ack p99 with saturated workers ≤ 1.2 x the unsaturated (ingress) p99.

    python bench/ingress.py                 # ~1.5 minutes on 2 cores
    python bench/ingress.py --seconds 20 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg
from aiohttp import web

from bench._common import (
    ROOT,
    FakesProcess,
    embedded_server,
    fmt,
    free_port,
    fresh_database,
    loadavg,
    machine,
    pct,
    quiet_logging,
    run_load,
    server_version,
    table,
)
from gateway import Reply, Services, Turn, TurnResult, hookimpl
from gateway.config import config_from_mapping
from gateway.http import bound_port
from gateway.runtime import Gateway

PATH = "/slack/main/events"


@dataclass
class Phase:
    name: str
    kind: str  # "max" or "open"
    statuses: list[int]
    latencies: list[float]
    elapsed: float
    server_cpu: float
    gen_cpu: float
    lag: list[float] = field(default_factory=list)
    note: str = ""
    turns: int | None = None  # turns completed during the measured window (agent phases)

    @property
    def ok(self) -> int:
        return sum(1 for s in self.statuses if s == 200)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else float("nan")

    def p(self, q: float) -> float:
        return pct([lat * 1000 for lat, s in zip(self.latencies, self.statuses, strict=True) if s == 200], q)

    @property
    def errors(self) -> int:
        return len(self.statuses) - self.ok

    @property
    def cpu_per_request_ms(self) -> float:
        return self.server_cpu / self.ok * 1000 if self.ok else float("nan")


# -- the baseline ------------------------------------------------------------------------------


@asynccontextmanager
async def bare_server(url: str, pool_max: int) -> AsyncIterator[str]:
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE bare_inbox (id bigserial PRIMARY KEY, payload jsonb NOT NULL,"
                       " received_at timestamptz NOT NULL DEFAULT now())")
    await conn.close()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_max)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        await pool.execute("INSERT INTO bare_inbox (payload) VALUES ($1)", body.decode())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post(PATH, handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}{PATH}"
    finally:
        await runner.cleanup()
        await pool.close()


# -- the gateway -------------------------------------------------------------------------------


class _Responder:
    def __init__(self, seconds: float) -> None:
        self.name = "bench-sleep" if seconds else "bench-noop"
        self.seconds = seconds

    async def respond(self, turn: Turn) -> TurnResult:
        if self.seconds:
            await asyncio.sleep(self.seconds)  # a slow LLM that costs no CPU
        return TurnResult(replies=[Reply(text="ok")])


class SleepPlugin:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    @hookimpl
    def soulgate_responder(self, services: Services) -> _Responder:
        return _Responder(self.seconds)


@asynccontextmanager
async def gateway_server(
    url: str, fakes: dict[str, Any], *, role: str, responder: str, workers: int, pool_max: int,
    slow: float, soul_dir: Path,
) -> AsyncIterator[tuple[str, Gateway]]:
    data: dict[str, Any] = {
        "admin": {"enabled": False},
        "http": {"port": 0},
        "database": {"pool_max": pool_max},
        "workers": {"dispatch": workers},
        "channels": {"slack": {"main": {
            "bot_token": fakes["token"], "signing_secret": fakes["secret"], "api_base_url": fakes["slack"],
        }}},
    }
    plugins: list[tuple[str, object]] = []
    if responder == "agents":
        data["agents"] = {"soul_dir": str(soul_dir)}
        data["models"] = {"default": {"model": "openai/bench-model", "api_base": fakes["llm"],
                                      "api_key": "sk-bench", "timeout": 30.0}}
    else:
        plugins.append(("bench", SleepPlugin(slow if responder == "sleep" else 0.0)))
    config = config_from_mapping(data, env={})
    gw = Gateway(config, role=role, extra_plugins=plugins, entry_points=False,  # type: ignore[arg-type]
                 database_url=url)
    await gw.start()
    try:
        if responder == "agents":
            from agents.llm import load_litellm

            await load_litellm()  # the import is a one-off start-up cost, not the steady state
        yield f"http://127.0.0.1:{gw.public_port}{PATH}", gw
    finally:
        await gw.stop()


@asynccontextmanager
async def worker_process(url: str, fakes: dict[str, Any], workers: int, pool_max: int, soul_dir: Path,
                         work: Path) -> AsyncIterator[None]:
    """``soulgate run --role worker`` with the SOUL agent, in its own process (the split deployment)."""
    port = free_port()
    config = work / "worker.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\npool_max = {pool_max}\n\n[admin]\nport = {port}\ntoken = "bench"\n\n'
        f'[http]\nenabled = false\n\n[workers]\ndispatch = {workers}\n\n[agents]\nsoul_dir = "{soul_dir}"\n\n'
        f'[models.default]\nmodel = "openai/bench-model"\napi_base = "{fakes["llm"]}"\napi_key = "sk-bench"\n'
        f'timeout = 30.0\n\n[channels.slack.main]\nbot_token = "{fakes["token"]}"\n'
        f'signing_secret = "{fakes["secret"]}"\napi_base_url = "{fakes["slack"]}"\n', encoding="utf-8")
    log = (work / "worker.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "--config", str(config), "run", "--role", "worker",
        cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer bench"}) as session:
            for _ in range(600):
                if proc.returncode is not None:
                    raise RuntimeError(f"worker exited: {(work / 'worker.log').read_text()[-1500:]}")
                with suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield None
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


# -- phases --------------------------------------------------------------------------------------


async def measure(name: str, url: str, spec: dict[str, Any], note: str = "", turns_done: Gateway | None = None
                  ) -> Phase:
    # warm-up: connections, prepared statements, code paths
    await run_load({"url": url, "mode": "closed", "concurrency": 8, "count": 200, "duration": 5,
                    "tag": f"warm-{name}", "secret": spec["secret"]})
    done0 = 0
    if turns_done is not None:
        done0 = await wait_turns(turns_done, 20)
    cpu0 = time.process_time()
    result = await run_load({"url": url, **spec})
    cpu = time.process_time() - cpu0
    phase = Phase(name, spec["mode"], result["status"], result["latency"], result["elapsed"], cpu,
                  result["cpu"], result["lag"], note)
    if turns_done is not None:
        phase.turns = await done_count(turns_done) - done0
    print(f"  {name}: {phase.ok} ok, {phase.errors} errors, {phase.rate:.0f}/s, p99 {phase.p(0.99):.1f} ms",
          file=sys.stderr, flush=True)
    return phase


async def done_count(gw: Gateway) -> int:
    rows = await gw.store.db.fetch("SELECT count(*) AS n FROM inbox WHERE status = 'done'")
    return int(rows[0]["n"])


async def wait_turns(gw: Gateway, count: int, within: float = 120.0) -> int:
    """Until ``count`` turns are done (the workers are warm: litellm imported, Router built); the count."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done = await done_count(gw)
        if done >= count:
            return done
        await asyncio.sleep(0.2)
    raise TimeoutError(f"fewer than {count} turns done after {within} s")


async def inbox_state(gw: Gateway) -> str:
    rows = await gw.store.db.fetch("SELECT status, count(*) AS n FROM inbox GROUP BY status ORDER BY status")
    return ", ".join(f"{r['status']} {r['n']}" for r in rows)


async def amain(args: argparse.Namespace) -> None:
    server = await asyncio.to_thread(embedded_server, args.data_dir)
    pg = await server_version(server)
    fakes = FakesProcess(llm_latency=args.llm_latency)
    soul_dir = Path(tempfile.mkdtemp(prefix="soulgate-bench-souls-"))  # empty: the built-in agent
    load_before = loadavg()
    phases: list[Phase] = []
    common = {"secret": fakes.info["secret"], "channels": args.channels, "duration": args.seconds}
    closed = {**common, "mode": "closed", "concurrency": args.concurrency}
    try:
        print("maximum throughput (closed loop)", file=sys.stderr)
        async with fresh_database(server) as db, bare_server(db, args.pool) as url:
            bare_max = await measure("bare max", url, {**closed, "tag": "bare-max"})
        async with fresh_database(server) as db, gateway_server(
            db, fakes.info, role="ingress", responder="noop", workers=4, pool_max=args.pool, slow=0,
            soul_dir=soul_dir,
        ) as (url, gw):
            gw_max = await measure("gateway max", url, {**closed, "tag": "gw-max"})
            gw_max.note = await inbox_state(gw)
        phases += [bare_max, gw_max]

        rate = args.rate or 0.5 * min(bare_max.rate, gw_max.rate)
        opened = {**common, "mode": "open", "rate": rate}
        print(f"ack latency at {rate:.0f} requests/s (open loop)", file=sys.stderr)
        async with fresh_database(server) as db, bare_server(db, args.pool) as url:
            phases.append(await measure("bare half", url, {**opened, "tag": "bare-half"}))
        async with fresh_database(server) as db, gateway_server(
            db, fakes.info, role="ingress", responder="noop", workers=4, pool_max=args.pool, slow=0,
            soul_dir=soul_dir,
        ) as (url, gw):
            phases.append(await measure("gateway half", url, {**opened, "tag": "gw-half"}))
            phases[-1].note = await inbox_state(gw)
        async with fresh_database(server) as db, gateway_server(
            db, fakes.info, role="all", responder="sleep", workers=4, pool_max=args.pool, slow=args.slow,
            soul_dir=soul_dir,
        ) as (url, gw):
            phases.append(await measure("gateway half, sleeping turns", url, {**opened, "tag": "gw-sleep"}))
            phases[-1].note = await inbox_state(gw)
        async with fresh_database(server) as db, gateway_server(
            db, fakes.info, role="all", responder="agents", workers=args.agent_workers,
            pool_max=args.agent_workers + args.pool, slow=0, soul_dir=soul_dir,
        ) as (url, gw):
            phases.append(await measure("gateway half, agent turns", url, {**opened, "tag": "gw-agents"},
                                        turns_done=gw))
            phases[-1].note = await inbox_state(gw)
        if args.split:
            async with fresh_database(server) as db, gateway_server(
                db, fakes.info, role="ingress", responder="noop", workers=4, pool_max=args.pool, slow=0,
                soul_dir=soul_dir,
            ) as (url, gw), worker_process(db, fakes.info, args.agent_workers, args.agent_workers + args.pool,
                                           soul_dir, soul_dir):
                phases.append(await measure("ingress + worker process, agent turns", url,
                                            {**opened, "tag": "gw-split"}, turns_done=gw))
                phases[-1].note = await inbox_state(gw)
    finally:
        fakes.close()
    print(report(phases, args, rate, pg, load_before, loadavg()), flush=True)


def report(phases: list[Phase], args: argparse.Namespace, rate: float, pg: str, load0: str, load1: str) -> str:
    by = {p.name: p for p in phases}
    rows = []
    for p in phases:
        rows.append([p.name, len(p.statuses), p.errors, fmt(p.rate, 0), fmt(p.p(0.5), 2), fmt(p.p(0.99), 2),
                     fmt(p.cpu_per_request_ms, 3), fmt(pct(p.lag, 0.99) * 1000 if p.lag else float("nan"), 2)])
    bare_max, gw_max = by["bare max"], by["gateway max"]
    base = by["gateway half"].p(0.99)
    checks = [
        ("throughput gateway / bare", gw_max.rate / bare_max.rate, "≥ 0.8", gw_max.rate / bare_max.rate >= 0.8),
        ("ack p99 at half load, gateway / bare", base / by["bare half"].p(0.99), "≤ 2",
         base / by["bare half"].p(0.99) <= 2),
    ]
    for name, label in (("gateway half, sleeping turns", "sleeping turns"),
                        ("gateway half, agent turns", "agent turns, one process"),
                        ("ingress + worker process, agent turns", "agent turns, worker process")):
        if name in by:
            ratio = by[name].p(0.99) / base
            checks.append((f"ack p99 {label} / unsaturated", ratio, "≤ 1.2", ratio <= 1.2))
    notes = [f"{p.name}: inbox at the end: {p.note}"
             + (f"; {p.turns} turns done in the measured {args.seconds:g} s" if p.turns is not None else "")
             for p in phases if p.note]
    out = table(
        f"soulgate ingress benchmark — Slack Events API webhooks, {args.seconds:g} s per phase, "
        f"closed loop {args.concurrency} senders, open loop {rate:.0f}/s, {args.channels} DM channels\n"
        f"machine: {machine()}; PostgreSQL {pg} (embedded); load average before {load0}, after {load1}",
        ["phase", "requests", "errors", "acked/s", "p50 ms", "p99 ms", "server CPU ms/req", "gen lag p99 ms"],
        rows,
        [*notes,
         f"sleeping turns: role all, 4 dispatch workers, responder sleeps {args.slow:g} s; agent turns: role "
         f"all, {args.agent_workers} dispatch workers, SOUL agent → litellm → fake LLM "
         f"({args.llm_latency:g} s latency); ingress + worker process: the same agent turns in a separate "
         f"`soulgate run --role worker` process, this process in role ingress; server CPU = this process "
         f"(HTTP server + gateway) per acked request"],
    )
    out += "\n\n" + table("targets", ["check", "ratio", "target", "met"],
                          [[n, fmt(r, 2), t, "yes" if ok else "NO"] for n, r, t, ok in checks])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured phase")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop senders for the maximum")
    parser.add_argument("--rate", type=float, default=0.0, help="open-loop rate (default: half the lower max)")
    parser.add_argument("--channels", type=int, default=100, help="DM channels the events are spread over")
    parser.add_argument("--pool", type=int, default=10, help="database pool size (the gateway's default)")
    parser.add_argument("--slow", type=float, default=2.0, help="seconds the sleeping responder takes per turn")
    parser.add_argument("--llm-latency", type=float, default=1.0, help="the fake LLM's latency in seconds")
    parser.add_argument("--agent-workers", type=int, default=32, help="dispatch workers in the agent phase")
    parser.add_argument("--no-split", dest="split", action="store_false",
                        help="skip the phase with the agent turns in a separate worker process")
    parser.add_argument("--data-dir", help="embedded Postgres data directory (default: a fresh temp dir)")
    args = parser.parse_args()
    quiet_logging()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
