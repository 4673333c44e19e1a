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
   sleeps ``--slow`` seconds per turn (no CPU), (b) the real SOUL agent through
   litellm against the fake LLM answering after ``--llm-latency`` seconds, with
   the default ``--workers`` and with ``--agent-workers`` dispatch workers (the
   LLM client's CPU in the same process as the webhooks);
4. the heavy agent load in a separate ``soulgate run --role worker`` process,
   with this process in role ingress (the split deployment of process roles;
   ``--worker-nice`` runs it at a lower CPU priority).

``--pin`` gives this process and the Postgres backends serving it one CPU, and
everything else (the postmaster and the other backends, the worker process, the
fakes, the load generator) the others (``bench/_cpus.py``): what a machine with a
core to spare for the ingress would do. Every phase runs pinned, the baselines too.

``--repeat`` runs every phase that many times, interleaved, and reports medians.

Targets (issue 9): throughput ≥ 0.8 x bare; ack p99 at half load ≤ 2 x bare's
p99; ack p99 with saturated workers ≤ 1.2 x the unsaturated (ingress) p99.

    python bench/ingress.py                 # ~2 minutes on 2 cores
    python bench/ingress.py --repeat 3 --seconds 15 --worker-nice 10
    python bench/ingress.py --pin --worker-nice 19 --rate 791 --repeat 6 --only "unsaturated,worker process"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
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
    no_reset,
    pct,
    quiet_logging,
    run_load,
    scratch_dir,
    server_version,
    table,
)
from bench._cpus import CpuSplit
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
    pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_max, reset=no_reset)

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
                         work: Path, nice: int = 0, split: CpuSplit | None = None) -> AsyncIterator[None]:
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
    niced = ["nice", "-n", str(nice)] if nice else []
    proc = await asyncio.create_subprocess_exec(
        *niced, sys.executable, "-m", "gateway.cli", "--config", str(config), "run", "--role", "worker",
        cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    if split is not None:
        split.elsewhere(proc.pid)  # before it starts any thread: they inherit it
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


async def measure(name: str, url: str, spec: dict[str, Any], note: str = "", turns_done: Gateway | None = None,
                  split: CpuSplit | None = None) -> Phase:
    on_spawn = split.elsewhere if split is not None else None
    # warm-up: connections, prepared statements, code paths
    await run_load({"url": url, "mode": "closed", "concurrency": 8, "count": 200, "duration": 5,
                    "tag": f"warm-{name}", "secret": spec["secret"]}, on_spawn=on_spawn)
    done0 = 0
    if turns_done is not None:
        done0 = await wait_turns(turns_done, 20)
    cpu0 = time.process_time()
    result = await run_load({"url": url, **spec}, on_spawn=on_spawn)
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


@dataclass
class Setup:
    """One system under test: the baseline, or a gateway in some role with some responder."""

    name: str
    role: str = ""  # "" = the bare baseline
    responder: str = "noop"
    workers: int = 4
    split: bool = False  # agent turns in a separate `soulgate run --role worker` process


def setups(args: argparse.Namespace) -> list[Setup]:
    out = [
        Setup("bare half"),
        Setup("gateway half (unsaturated)", "ingress"),
        Setup("gateway half, sleeping turns", "all", "sleep"),
        Setup(f"gateway half, agent turns, {args.workers} workers", "all", "agents", args.workers),
        Setup(f"gateway half, agent turns, {args.agent_workers} workers", "all", "agents", args.agent_workers),
    ]
    if args.split:
        out.append(Setup(f"ingress + worker process ({args.agent_workers} workers"
                         + (f", nice {args.worker_nice})" if args.worker_nice else ")"),
                         "ingress", "agents", args.agent_workers, split=True))
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        out = [s for s in out if any(w in s.name for w in wanted)]
    return out


@asynccontextmanager
async def system(setup: Setup, server: str, fakes: dict[str, Any], args: argparse.Namespace, soul_dir: Path
                 ) -> AsyncIterator[tuple[str, Gateway | None]]:
    async with fresh_database(server) as plain_db:
        # with --pin, the backends serving this process are told apart by their application_name
        db = CpuSplit.tag(plain_db) if args.split_cpus else plain_db
        if not setup.role:
            async with bare_server(db, args.pool) as url:
                yield url, None
            return
        agents_here = setup.responder == "agents" and not setup.split
        async with gateway_server(
            db, fakes, role=setup.role, responder=setup.responder if agents_here else (
                "sleep" if setup.responder == "sleep" else "noop"),
            workers=setup.workers, pool_max=args.pool + (setup.workers if agents_here else 0), slow=args.slow,
            soul_dir=soul_dir,
        ) as (url, gw):
            if setup.split:
                async with worker_process(plain_db, fakes, setup.workers, setup.workers + args.pool, soul_dir,
                                          soul_dir.parent, nice=args.worker_nice, split=args.split_cpus):
                    yield url, gw
            else:
                yield url, gw


async def amain(args: argparse.Namespace) -> None:
    server = await asyncio.to_thread(embedded_server, args.data_dir)
    pg = await server_version(server)
    fakes = FakesProcess(llm_latency=args.llm_latency)
    split = CpuSplit.of_this_machine() if args.pin else None
    args.split_cpus = split
    pinning = AsyncExitStack()
    if split is not None:
        split.measure_here()
        split.elsewhere(fakes.proc.pid)
        await pinning.enter_async_context(split.postgres(server))
    work = scratch_dir("soulgate-bench-ingress-")
    soul_dir = work / "soul"  # empty: the built-in agent
    soul_dir.mkdir()
    load_before = loadavg()
    phases: list[Phase] = []
    common = {"secret": fakes.info["secret"], "channels": args.channels, "duration": args.seconds}
    closed = {**common, "mode": "closed", "concurrency": args.concurrency}
    try:
        print("maximum throughput (closed loop)", file=sys.stderr)
        # --only with --rate: the open-loop phases asked for, no maxima
        maxima = [] if args.only and args.rate else [Setup("bare max"), Setup("gateway max", "ingress")]
        for i in range(args.repeat):
            for setup in maxima:
                async with system(setup, server, fakes.info, args, soul_dir) as (url, gw):
                    phases.append(await measure(setup.name, url, {**closed, "tag": f"max{i}{setup.role}"},
                                                split=split))
        rate = args.rate or 0.5 * min(statistics.median(p.rate for p in phases if p.name == "bare max"),
                                      statistics.median(p.rate for p in phases if p.name == "gateway max"))
        opened = {**common, "mode": "open", "rate": rate}
        print(f"ack latency at {rate:.0f} requests/s (open loop)", file=sys.stderr)
        for i in range(args.repeat):
            for n, setup in enumerate(setups(args)):
                async with system(setup, server, fakes.info, args, soul_dir) as (url, gw):
                    busy = gw if setup.responder == "agents" else None
                    phases.append(await measure(setup.name, url, {**opened, "tag": f"half{i}-{n}"}, turns_done=busy,
                                                split=split))
                    if gw is not None:
                        phases[-1].note = await inbox_state(gw)
    finally:
        await pinning.aclose()
        fakes.close()
    print(report(phases, args, rate, pg, load_before, loadavg()), flush=True)


def report(phases: list[Phase], args: argparse.Namespace, rate: float, pg: str, load0: str, load1: str) -> str:
    names = list(dict.fromkeys(p.name for p in phases))

    def med(name: str, value: Any) -> float:
        return statistics.median(value(p) for p in phases if p.name == name)

    rows = []
    for name in names:
        runs = [p for p in phases if p.name == name]
        p99s = sorted(p.p(0.99) for p in runs)
        rows.append([name, sum(len(p.statuses) for p in runs), sum(p.errors for p in runs),
                     fmt(med(name, lambda p: p.rate), 0), fmt(med(name, lambda p: p.p(0.5)), 1),
                     fmt(med(name, lambda p: p.p(0.99)), 1),
                     f"{fmt(p99s[0], 0)}-{fmt(p99s[-1], 0)}" if len(runs) > 1 else "",
                     fmt(med(name, lambda p: p.cpu_per_request_ms), 2),
                     fmt(med(name, lambda p: p.turns if p.turns is not None else float("nan")), 0),
                     fmt(med(name, lambda p: pct(p.lag, 0.99) * 1000 if p.lag else float("nan")), 1)])
    checks = []  # each ratio whose two phases ran (--only may leave some out)
    if {"gateway max", "bare max"} <= set(names):
        throughput = med("gateway max", lambda p: p.rate) / med("bare max", lambda p: p.rate)
        checks.append(["throughput gateway / bare", fmt(throughput, 2), "≥ 0.8", "yes" if throughput >= 0.8 else "NO"])
    unsaturated = "gateway half (unsaturated)"
    if {unsaturated, "bare half"} <= set(names):
        half = med(unsaturated, lambda p: p.p(0.99)) / med("bare half", lambda p: p.p(0.99))
        checks.append(["ack p99 at half load, gateway / bare", fmt(half, 2), "≤ 2", "yes" if half <= 2 else "NO"])
    baselines = {"bare max", "gateway max", "bare half", unsaturated}
    for name in (n for n in names if n not in baselines and unsaturated in names):
        ratio = med(name, lambda p: p.p(0.99)) / med(unsaturated, lambda p: p.p(0.99))
        checks.append([f"ack p99 {name.removeprefix('gateway half, ')} / unsaturated", fmt(ratio, 2), "≤ 1.2",
                       "yes" if ratio <= 1.2 else "NO"])
    last = {p.name: p for p in phases}
    notes = [f"{n}: inbox at the end of the last run: {last[n].note}" for n in names if last[n].note]
    out = table(
        f"soulgate ingress benchmark — Slack Events API webhooks, {args.seconds:g} s per phase, {args.repeat} run(s) "
        f"each (medians), closed loop {args.concurrency} senders, open loop {rate:.0f}/s, {args.channels} DM "
        f"channels\nmachine: {machine()}; PostgreSQL {pg} (embedded); load average before {load0}, after {load1}"
        + (f"\n{args.split_cpus.describe()}" if args.split_cpus else ""),
        ["phase", "requests", "errors", "acked/s", "p50 ms", "p99 ms", "p99 range", "CPU ms/req", "turns",
         "gen lag p99"],
        rows,
        [*notes,
         f"sleeping turns: role all, 4 dispatch workers, the responder sleeps {args.slow:g} s (no CPU); agent "
         f"turns: role all, the SOUL agent → litellm → fake LLM answering after {args.llm_latency:g} s; ingress + "
         "worker process: this process in role ingress, the agent turns in `soulgate run --role worker`",
         "CPU ms/req = this process (HTTP server + gateway) per acked request; turns = agent turns finished "
         "during the measured window; gen lag = how late the load generator itself sent (ms)"],
    )
    return out + "\n\n" + table("targets (medians)", ["check", "ratio", "target", "met"], checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured phase")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop senders for the maximum")
    parser.add_argument("--rate", type=float, default=0.0, help="open-loop rate (default: half the lower max)")
    parser.add_argument("--channels", type=int, default=100, help="DM channels the events are spread over")
    parser.add_argument("--pool", type=int, default=10, help="database pool size (the gateway's default)")
    parser.add_argument("--slow", type=float, default=2.0, help="seconds the sleeping responder takes per turn")
    parser.add_argument("--llm-latency", type=float, default=1.0, help="the fake LLM's latency in seconds")
    parser.add_argument("--workers", type=int, default=4, help="dispatch workers (the gateway's default)")
    parser.add_argument("--agent-workers", type=int, default=32,
                        help="dispatch workers in the heavy agent phase and the worker process")
    parser.add_argument("--worker-nice", type=int, default=0, help="nice level of the separate worker process")
    parser.add_argument("--pin", action="store_true",
                        help="one CPU for this process and its Postgres backends, the others for everything else "
                             "(postmaster, other backends, worker process, fakes, load generator): a core to spare")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every phase, interleaved; medians")
    parser.add_argument("--only", default="",
                        help="comma-separated parts of open-loop phase names to run (with --rate: no maxima)")
    parser.add_argument("--no-split", dest="split", action="store_false",
                        help="skip the phase with the agent turns in a separate worker process")
    parser.add_argument("--data-dir", help="embedded Postgres data directory (default: a fresh temp dir)")
    args = parser.parse_args()
    quiet_logging()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
