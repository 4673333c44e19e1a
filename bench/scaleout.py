"""Scale-out benchmark: 1 vs 2 ``soulgate run`` processes on one machine and one Postgres.

Each instance is a real ``soulgate run`` subprocess (all roles, default workers)
with the http channel (``POST /v1/chat/completions``) on its own port. A
closed-loop client process (bench/_chat_load.py) keeps ``--clients``
conversations busy, spread round-robin over the instances like a load balancer;
every request is admitted, dispatched, answered, recorded and delivered back
through Postgres. The responder is ``echo`` (bench/_echo_responder.py: the
pipeline alone) or ``agent`` (the built-in default agent through litellm to the
fake LLM of tests/fakes in its own process, answering at once).

The baseline is the same load on one instance, measured in the same run. Beside
messages/s and latency it measures what each message costs: CPU of the gateway
processes, of every Postgres process (``/proc/<pid>/stat``; pg_stat_statements
is not in the embedded Postgres), of the client, and Postgres transactions and
row writes per message (``pg_stat_database``) — the numbers for sizing N machines
(docs/performance.md).

    python bench/scaleout.py                        # ~1.5 minutes
    python bench/scaleout.py --responder agent --clients 32 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg

from bench._common import (
    BENCH,
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
    server_version,
    table,
)
from storage import Database

KEY = "bench-scaleout-key-0123456789"
TICK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting from /proc ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    out.append(int(entry.name))
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def postmaster_pid(server_url: str) -> int:
    """The embedded server's postmaster (its data directory is the socket directory)."""
    host = parse_qs(urlsplit(server_url).query).get("host", [""])[0]
    return int((Path(host) / "postmaster.pid").read_text().split()[0])


class CpuMeter:
    def __init__(self, gateways: list[int], postmaster: int) -> None:
        self.gateways, self.postmaster = gateways, postmaster

    def sample(self) -> dict[str, float]:
        pg = [self.postmaster, *children(self.postmaster)]
        busy, total = machine_busy()
        return {"gateway": sum(cpu_seconds(p) for p in self.gateways),
                "postgres": sum(cpu_seconds(p) for p in pg), "busy": busy / TICK, "total": total / TICK}


# -- instances ------------------------------------------------------------------------------------


def config_text(url: str, port: int, soul_dir: Path, responder: str, llm: str | None) -> str:
    lines = [
        "[database]", f'url = "{url}"',
        "[admin]", "enabled = false",
        "[http]", f"port = {port}",
        "[agents]", f'soul_dir = "{soul_dir}"',
        "[channels.http.main]", f'api_keys = ["{KEY}"]',
    ]
    if responder == "echo":
        lines += ["[plugins]", 'modules = ["bench._echo_responder"]']
    else:
        lines += ["[models.default]", 'model = "openai/bench-model"', f'api_base = "{llm}"', 'api_key = "sk-bench"']
    return "\n".join(lines) + "\n"


@dataclass
class Instance:
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


async def wait_ready(instance: Instance, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if instance.proc.returncode is not None:
                raise RuntimeError(f"soulgate run exited: {instance.log.read_text()[-3000:]}")
            # Ready = one request answered: the agent's litellm Router is built in the background
            # after start, and that CPU must not fall into the measured window.
            body = {"model": "assistant", "messages": [{"role": "user", "content": "ready?"}]}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(instance.url, json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=within)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.3)
    raise TimeoutError(f"instance on port {instance.port} not ready: {instance.log.read_text()[-3000:]}")


@contextlib.asynccontextmanager
async def instances(url: str, count: int, args: argparse.Namespace, llm: str | None) -> AsyncIterator[list[Instance]]:
    work = Path(tempfile.mkdtemp(prefix="soulgate-scaleout-"))
    (work / "soul").mkdir()  # no SOUL files: the built-in default agent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    started: list[Instance] = []
    try:
        for n in range(count):
            port = free_port()
            config = work / f"soulgate-{n}.toml"
            config.write_text(config_text(url, port, work / "soul", args.responder, llm))
            log = work / f"soulgate-{n}.log"
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway.cli", "--config", str(config), "run", "--role", "all",
                    cwd=work, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT)
            started.append(Instance(proc, port, log))
        await asyncio.gather(*(wait_ready(i) for i in started))
        yield started
    finally:
        for inst in started:
            with contextlib.suppress(ProcessLookupError):
                inst.proc.terminate()
        for inst in started:
            try:
                await asyncio.wait_for(inst.proc.wait(), 30)
            except TimeoutError:
                inst.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


# -- one measured run -----------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    count: int
    completed: int
    seconds: float
    latency: list[float]
    errors: dict[str, int]
    cpu: dict[str, float]  # CPU seconds in the window: gateway, postgres, client, busy (whole machine), total
    pg: dict[str, int]  # pg_stat_database deltas

    @property
    def rate(self) -> float:
        return self.completed / self.seconds

    def per_message(self, what: str) -> float:
        """Milliseconds of CPU (or count, for pg stats) per message."""
        value = self.cpu[what] * 1000 if what in self.cpu else float(self.pg[what])
        return value / max(1, self.completed)


PG_STATS = "SELECT xact_commit + xact_rollback AS xacts, tup_inserted + tup_updated + tup_deleted AS writes" \
           " FROM pg_stat_database WHERE datname = current_database()"


async def pg_stats(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(PG_STATS)
        assert row is not None
        return {"xacts": int(row["xacts"]), "writes": int(row["writes"])}
    finally:
        await conn.close()


async def measure(server: str, count: int, args: argparse.Namespace, llm: str | None) -> Run:
    async with fresh_database(server) as url:
        db = Database(url)
        await db.connect()  # migrate once, before the instances race for it
        await db.close()
        async with instances(url, count, args, llm) as running:
            meter = CpuMeter([i.proc.pid for i in running], postmaster_pid(server))
            spec = {"urls": [i.url for i in running], "key": KEY, "model": "assistant",
                    "concurrency": args.clients, "warmup": args.warmup, "duration": args.seconds}
            client = await asyncio.create_subprocess_exec(
                sys.executable, str(BENCH / "_chat_load.py"), json.dumps(spec),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            await asyncio.sleep(args.warmup)
            before, stats0 = meter.sample(), await pg_stats(url)
            await asyncio.sleep(args.seconds)
            after, stats1 = meter.sample(), await pg_stats(url)
            out, err = await client.communicate()
            if client.returncode != 0:
                raise RuntimeError(f"load client failed: {err.decode()[-2000:]}")
            load = json.loads(out)
    cpu = {k: after[k] - before[k] for k in after}
    cpu["client"] = load["cpu"]
    pg = {k: stats1[k] - stats0[k] - 2 for k in stats1}  # minus our own two snapshot transactions
    name = f"{count} instance{'s' if count > 1 else ''}"
    print(f"{name}: {load['completed'] / load['seconds']:.1f} msg/s", file=sys.stderr, flush=True)
    return Run(name, count, load["completed"], load["seconds"], load["latency"], load["errors"], cpu, pg)


def report(runs: list[Run], args: argparse.Namespace, pg_version: str, load0: str) -> str:
    singles = [r.rate for r in runs if r.count == 1]
    base_rate = statistics.median(singles)
    rows = []
    for r in runs:
        ms = [x * 1000 for x in r.latency]
        busy = 100 * r.cpu["busy"] / r.cpu["total"] * (os.cpu_count() or 1)
        rows.append([r.name, r.completed, fmt(r.rate, 1), fmt(r.rate / base_rate, 2), fmt(pct(ms, 0.5), 1),
                     fmt(pct(ms, 0.99), 1), fmt(r.per_message("gateway"), 2), fmt(r.per_message("postgres"), 2),
                     fmt(r.per_message("client"), 2), fmt(r.per_message("xacts"), 1),
                     fmt(r.per_message("writes"), 1), f"{busy:.0f}%", sum(r.errors.values())])
    notes = [
        f"machine: {machine()}; load average {load0} before, {loadavg()} after; PostgreSQL {pg_version}"
        " (embedded, pgserver, same machine)",
        f"responder: {args.responder}; {args.clients} closed-loop clients (one conversation each), round-robin over"
        f" the instances; {args.warmup:.0f}s warm-up, {args.seconds:.0f}s measured; default workers per instance",
        "CPU ms/msg: CPU time of all gateway processes / of every Postgres process / of the load client, divided"
        " by the answered requests; PG xacts and row writes per message from pg_stat_database",
        f"machine busy: all CPUs together, out of {100 * (os.cpu_count() or 1)}% (other processes on the machine"
        " included: the CPU columns times msgs/s show how much of it was ours)",
        f"x 1 inst: against the median of the 1-instance runs; {args.instances} / 1 instances, medians:"
        f" {statistics.median(r.rate for r in runs if r.count > 1) / base_rate:.2f}",
    ]
    header = ["run", "answered", "msgs/s", "x 1 inst", "p50 ms", "p99 ms", "gw CPU ms/msg", "pg CPU ms/msg",
              "client CPU ms/msg", "pg xacts/msg", "pg writes/msg", "machine busy", "errors"]
    return table("soulgate scale-out benchmark — http channel, 1 vs 2 soulgate run processes, one Postgres",
                 header, rows, notes)


async def amain(args: argparse.Namespace) -> None:
    server = await asyncio.to_thread(embedded_server, args.data_dir)
    version, load0 = await server_version(server), loadavg()
    with llm_process(args.responder) as llm:
        runs = []
        for _ in range(args.repeat):
            for count in (1, args.instances):
                runs.append(await measure(server, count, args, llm))
    print(report(runs, args, version, load0), flush=True)


@contextlib.contextmanager
def llm_process(responder: str) -> Iterator[str | None]:
    if responder != "agent":
        yield None
        return
    fakes = FakesProcess(0.0)
    try:
        yield str(fakes.info["llm"])
    finally:
        fakes.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2, help="instances in the scaled-out run")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients (conversations)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--responder", choices=["echo", "agent"], default="echo")
    parser.add_argument("--repeat", type=int, default=1, help="alternate 1 / N instance runs this many times")
    parser.add_argument("--data-dir", help="embedded Postgres data directory (default: a fresh temp dir)")
    args = parser.parse_args()
    if args.instances < 2 or args.clients < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--instances >= 2, --clients >= 1, --seconds > 0, --warmup >= 0")
    quiet_logging()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
