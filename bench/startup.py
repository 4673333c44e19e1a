"""Startup benchmark, plus what litellm costs: import time and CPU per completion.

1. Time from spawning ``soulgate run`` until the admin ``/readyz`` answers 200,
   with no SDK-backed channel enabled and the database already initialised
   (migrations applied), vs a minimal aiohttp + asyncpg app that connects a pool
   and serves 200 (both spawned the same way, polled the same way, alternately).
   A second gateway row has a model configured, so litellm is imported in the
   background while the gateway starts (informational). Every timed process
   loads compiled bytecode, as an installed package does (see ``BYTECODE``); a
   last row shows the start compiling soulgate's own modules from source, as an
   editable checkout does under ``PYTHONDONTWRITEBYTECODE=1``.
2. Import time (wall and CPU, in a fresh interpreter) of litellm and of the
   platform SDKs the gateway imports only when a channel needs them.
3. CPU per chat completion against the fake LLM (its own process, answering at
   once): ``time.process_time`` around N sequential calls, for a raw aiohttp
   POST (the floor), ``litellm.acompletion`` as agents/llm.py configures litellm
   (OpenAI-compatible calls through litellm's own HTTP handler, no message
   redaction), the same through the OpenAI SDK and with redaction on (what
   agents/llm.py switches off), the litellm Router, and the gateway's own seam
   (``agents.llm.LLM.complete``). ``--calls-only`` runs just this part,
   ``--ready-only`` just the first.

Target (issue 9): ready ≤ 2x the minimal app.

    python bench/startup.py                    # ~1.5 minutes on 2 cores
    python bench/startup.py --starts 10 --calls 500
    python bench/startup.py --ready-only --starts 3   # ~30 s: the time-to-ready table
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from pydantic import SecretStr

from bench._common import (
    ROOT,
    FakesProcess,
    embedded_server,
    fmt,
    free_port,
    fresh_database,
    loadavg,
    machine,
    quiet_logging,
    server_version,
    table,
)
from gateway.config import ModelConfig
from storage import Database

TOKEN = "bench-admin-token"

MINIMAL_APP = """
import asyncio, sys
import asyncpg
from aiohttp import web

async def main(url, port):
    pool = await asyncpg.create_pool(url, min_size=1, max_size=10)

    async def readyz(request):
        await pool.fetchval("SELECT 1")
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

IMPORT_PROBE = """
import json, os, sys, time
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
t, c = time.perf_counter(), time.process_time()
__import__(sys.argv[1])
print(json.dumps([time.perf_counter() - t, time.process_time() - c]))
"""

IMPORTS = [
    ("litellm", "litellm"),
    ("openai", "openai"),
    ("slack_sdk (web async client)", "slack_sdk.web.async_client"),
    ("aiogram", "aiogram"),
    ("botbuilder.core", "botbuilder.core"),
    ("aiohttp", "aiohttp"),
    ("asyncpg", "asyncpg"),
    ("gateway.runtime (the core)", "gateway.runtime"),
]


# -- 1. time to ready ----------------------------------------------------------------------------


def write_config(work: Path, url: str, port: int, llm: str | None) -> Path:
    souls = work / "soul"
    souls.mkdir(exist_ok=True)  # empty: the built-in agent
    text = (f'[database]\nurl = "{url}"\n\n[admin]\nport = {port}\ntoken = "{TOKEN}"\n\n'
            f'[http]\nport = 0\n\n[agents]\nsoul_dir = "{souls}"\n')
    if llm:
        text += f'\n[models.default]\nmodel = "openai/bench-model"\napi_base = "{llm}"\napi_key = "sk-bench"\n'
    path = work / ("with-model.toml" if llm else "plain.toml")
    path.write_text(text, encoding="utf-8")
    return path


#: Bytecode. The minimal app's modules (aiohttp, asyncpg) load from the .pyc files pip
#: wrote when it installed them, and so do soulgate's in an installed copy (pip install,
#: the Docker image). An editable checkout run with PYTHONDONTWRITEBYTECODE=1 (as the
#: development environment does) compiles every soulgate module from source at every
#: start instead, which the minimal app never pays. So the timed processes share one
#: bytecode cache in the scratch directory (PYTHONPYCACHEPREFIX), filled by untimed
#: warm-up starts; the "compiling" row runs without it.
BYTECODE_CACHED = "cached"
BYTECODE_SOURCE = "source"


def bytecode_env(mode: str, work: Path) -> dict[str, str | None]:
    if mode == BYTECODE_CACHED:
        return {"PYTHONPYCACHEPREFIX": str(work / "pycache"), "PYTHONDONTWRITEBYTECODE": None}
    return {"PYTHONPYCACHEPREFIX": None, "PYTHONDONTWRITEBYTECODE": "1"}


def child_env(extra: dict[str, str | None]) -> dict[str, str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


async def time_to_ready(command: list[str], port: int, limit: float = 60.0,
                        env_extra: dict[str, str | None] | None = None) -> float:
    """Seconds from spawn until GET /readyz on ``port`` answers 200; the process is stopped after."""
    env = child_env(env_extra or {})
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=errors)
        url = f"http://127.0.0.1:{port}/readyz"
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"},
                                             timeout=aiohttp.ClientTimeout(total=2)) as session:
                while time.perf_counter() - started < limit:
                    if proc.returncode is not None:
                        errors.seek(0)
                        raise RuntimeError(f"{command[:3]} exited: {errors.read().decode()[-1500:]}")
                    try:
                        async with session.get(url) as resp:
                            if resp.status == 200:
                                return time.perf_counter() - started
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await asyncio.sleep(0.005)
            raise TimeoutError(f"{command[:3]} not ready after {limit} s")
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def readiness(args: argparse.Namespace, url: str, llm: str, work: Path) -> dict[str, list[float]]:
    soulgate = shutil.which("soulgate")
    base = [soulgate] if soulgate else [sys.executable, "-m", "gateway.cli"]
    cached, source = bytecode_env(BYTECODE_CACHED, work), bytecode_env(BYTECODE_SOURCE, work)

    def minimal(port: int) -> list[str]:
        return [sys.executable, "-c", MINIMAL_APP, url, str(port)]

    def gateway(port: int, model: str | None) -> list[str]:
        return [*base, "--config", str(write_config(work, url, port, model)), "run"]

    # Untimed warm-up: fills the bytecode cache (litellm's too, which the gateway imports in
    # a thread that a start stopped at ready would leave half done).
    print("  warm-up (bytecode cache)", file=sys.stderr, flush=True)
    for command in (minimal, lambda p: gateway(p, None)):
        port = free_port()
        await time_to_ready(command(port), port, env_extra=cached)
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", "import litellm"], cwd=ROOT, check=True,
                            env=child_env(cached))
    rows: dict[str, tuple[Any, dict[str, str | None]]] = {
        "minimal aiohttp + asyncpg app": (minimal, cached),
        "soulgate run": (lambda p: gateway(p, None), cached),
        "soulgate run, a model configured": (lambda p: gateway(p, llm), cached),
        "soulgate run, compiling its modules at start": (lambda p: gateway(p, None), source),
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for i in range(args.starts):
        for name, (command, env_extra) in rows.items():
            port = free_port()
            times[name].append(await time_to_ready(command(port), port, env_extra=env_extra))
        print(f"  start {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              file=sys.stderr, flush=True)
    return times


# -- 2. imports --------------------------------------------------------------------------------------


def import_times(repeat: int) -> list[tuple[str, float, float]]:
    out = []
    for label, module in IMPORTS:
        walls, cpus = [], []
        for _ in range(repeat):
            done = subprocess.run([sys.executable, "-c", IMPORT_PROBE, module], cwd=ROOT, capture_output=True,
                                  text=True, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
            if done.returncode != 0:
                walls, cpus = [float("nan")], [float("nan")]
                break
            wall, cpu = json.loads(done.stdout.strip().splitlines()[-1])
            walls.append(wall)
            cpus.append(cpu)
        out.append((label, statistics.median(walls), statistics.median(cpus)))
        print(f"  import {label}: {out[-1][1]:.2f} s", file=sys.stderr, flush=True)
    return out


# -- 3. CPU per completion ------------------------------------------------------------------------


def messages() -> list[dict[str, Any]]:
    """A prompt of the size a turn sends: system prompt, some history, the new message."""
    system = ("You are a helpful assistant. Be concise. " * 12).strip()
    history: list[dict[str, Any]] = []
    for i in range(5):
        history.append({"role": "user", "content": f"Question {i}: what about the report for week {i}?"})
        history.append({"role": "assistant", "content": f"The report for week {i} is on track. " * 3})
    return [{"role": "system", "content": system}, *history,
            {"role": "user", "content": "And what should I prepare for tomorrow's meeting?"}]


async def cpu_per_call(args: argparse.Namespace, api_base: str) -> list[tuple[str, float, float]]:
    from agents.llm import FAST_PATH_ENV, LLM, load_litellm

    litellm = await load_litellm()  # configured as the gateway configures it
    msgs = messages()
    out: list[tuple[str, float, float]] = []

    async def measure(label: str, call: Any) -> None:
        for _ in range(args.warmup):
            await call()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(args.calls):
            await call()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        out.append((label, cpu / args.calls * 1000, wall / args.calls * 1000))
        print(f"  {label}: {out[-1][1]:.2f} ms CPU per call", file=sys.stderr, flush=True)

    async with aiohttp.ClientSession() as session:
        async def raw() -> None:
            async with session.post(f"{api_base}/chat/completions", headers={"Authorization": "Bearer sk-bench"},
                                    json={"model": "bench-model", "messages": msgs}) as resp:
                (await resp.json())["choices"][0]["message"]["content"]

        await measure("raw aiohttp POST + JSON (the floor)", raw)

    async def direct() -> None:
        await litellm.acompletion(model="openai/bench-model", api_base=api_base, api_key="sk-bench",
                                  messages=msgs, timeout=30, max_retries=0)

    await measure("litellm.acompletion (as agents/llm.py sets litellm up)", direct)

    async def direct_short() -> None:
        await litellm.acompletion(model="openai/bench-model", api_base=api_base, api_key="sk-bench",
                                  messages=msgs[-1:], timeout=30, max_retries=0)

    await measure("  the same, a 1-message prompt", direct_short)
    switch = os.environ.get(FAST_PATH_ENV)
    os.environ[FAST_PATH_ENV] = "false"  # litellm reads it per call
    try:
        await measure("  the same, through the OpenAI SDK (litellm's default)", direct)
    finally:
        if switch is None:
            os.environ.pop(FAST_PATH_ENV, None)
        else:
            os.environ[FAST_PATH_ENV] = switch
    before = getattr(litellm, "turn_off_message_logging", False)
    litellm.turn_off_message_logging = True  # type: ignore[attr-defined]
    try:
        await measure("  the same, message redaction on", direct)
    finally:
        litellm.turn_off_message_logging = before  # type: ignore[attr-defined]

    llm = LLM({"default": ModelConfig(model="openai/bench-model", api_base=api_base, api_key=SecretStr("sk-bench"),
                                      timeout=30)})
    router = await llm.router()

    async def routed() -> None:
        await router.acompletion(model="default", messages=msgs, timeout=30, num_retries=0,
                                 disable_fallbacks=True, drop_params=True)

    await measure("litellm Router.acompletion", routed)

    async def seam() -> None:
        await llm.complete(["default"], msgs)

    await measure("agents.llm.LLM.complete (the gateway's seam)", seam)
    llm.close()
    return out


# -- running and reporting ----------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> None:
    if args.calls_only:  # no Postgres needed: only the fake LLM
        load0, fakes = loadavg(), FakesProcess(llm_latency=0.0)
        try:
            print("CPU per completion", file=sys.stderr, flush=True)
            calls = await cpu_per_call(args, fakes.info["llm"])
        finally:
            fakes.close()
        print(report(args, {}, [], calls, "", load0, loadavg()), flush=True)
        return
    server = await asyncio.to_thread(embedded_server, args.data_dir)
    pg = await server_version(server)
    load0 = loadavg()
    fakes = FakesProcess(llm_latency=0.0)
    work = Path(tempfile.mkdtemp(prefix="soulgate-bench-startup-"))
    try:
        async with fresh_database(server) as url:
            db = Database(url)
            await db.connect()  # the database is initialised before the clock starts
            await db.close()
            print("time to ready", file=sys.stderr, flush=True)
            ready = await readiness(args, url, fakes.info["llm"], work)
        imports: list[tuple[str, float, float]] = []
        calls = []
        if not args.ready_only:
            print("imports", file=sys.stderr, flush=True)
            imports = await asyncio.to_thread(import_times, args.import_repeat)
            print("CPU per completion", file=sys.stderr, flush=True)
            calls = await cpu_per_call(args, fakes.info["llm"])
    finally:
        fakes.close()
        shutil.rmtree(work, ignore_errors=True)
    print(report(args, ready, imports, calls, pg, load0, loadavg()), flush=True)


def report(args: argparse.Namespace, ready: dict[str, list[float]], imports: list[tuple[str, float, float]],
           calls: list[tuple[str, float, float]], pg: str, load0: str, load1: str) -> str:
    calls_table = table(
        f"CPU per chat completion — fake LLM in its own process, answering at once; {args.calls} sequential calls "
        f"after {args.warmup} warm-up, a {len(messages())}-message prompt\nmachine: {machine()}; load average "
        f"before {load0}, after {load1}",
        ["client", "CPU ms/call", "wall ms/call"], [[n, fmt(c, 2), fmt(w, 2)] for n, c, w in calls],
        ["CPU = this process only (time.process_time); the fake server's CPU is not in it"],
    )
    if not ready:  # --calls-only
        return calls_table
    base = statistics.median(ready["minimal aiohttp + asyncpg app"])
    rows = [[k, fmt(statistics.median(v), 2), fmt(min(v), 2), fmt(max(v), 2),
             fmt(statistics.median(v) / base, 2)] for k, v in ready.items()]
    ratio = statistics.median(ready["soulgate run"]) / base
    out = [table(
        f"soulgate startup — spawn to admin /readyz 200, {args.starts} starts each (alternating), database "
        f"initialised\nmachine: {machine()}; PostgreSQL {pg} (embedded); load average before {load0}, after {load1}",
        ["process", "median s", "min s", "max s", "vs minimal"], rows,
        ["soulgate run: no channels, no model (the built-in agent); 'a model configured': litellm is imported "
         "in a background thread while the gateway starts",
         "every row but the last loads compiled bytecode (a cache filled by untimed warm-up starts), as an "
         "installed package does; the last compiles soulgate's own modules from source at every start, as an "
         "editable checkout does with PYTHONDONTWRITEBYTECODE=1"
         + (" (this checkout has __pycache__ folders, so it may not)" if has_pycache() else "")],
    )]
    out.append(table("target", ["check", "ratio", "target", "met"],
                     [["soulgate run / minimal app", fmt(ratio, 2), "≤ 2", "yes" if ratio <= 2 else "NO"]]))
    if imports:
        out.append(table(f"import time in a fresh interpreter (median of {args.import_repeat})",
                         ["module", "wall s", "CPU s"], [[m, fmt(w, 2), fmt(c, 2)] for m, w, c in imports]))
    if calls:
        out.append(calls_table)
    return "\n\n".join(out)


def has_pycache() -> bool:
    return any((ROOT / pkg / "__pycache__").is_dir() for pkg in ("gateway", "storage", "agents"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="starts of each process")
    parser.add_argument("--import-repeat", type=int, default=3, help="fresh interpreters per import timing")
    parser.add_argument("--calls", type=int, default=200, help="completions per client")
    parser.add_argument("--warmup", type=int, default=20, help="completions before the clock starts")
    parser.add_argument("--calls-only", action="store_true", help="only the CPU-per-completion table")
    parser.add_argument("--ready-only", action="store_true", help="only the time-to-ready table")
    parser.add_argument("--data-dir", help="embedded Postgres data directory (default: a fresh temp dir)")
    args = parser.parse_args()
    quiet_logging()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
