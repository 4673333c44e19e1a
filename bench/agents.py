"""Agent benchmark: whole agent turns through the gateway, litellm and a fake LLM with fixed latency.

N conversations each send M messages to the default SOUL agent, one at a time
(the next when the reply to the previous arrived, like a person waiting). Every
turn goes the whole way: admit → dispatch → SOUL agent (prompt with history and
full-text memory recall) → litellm Router → the fake OpenAI-compatible server
(in its own process, so its CPU is not ours) which answers after a fixed
latency → commit (reply, history, run record) → delivery to the fake channel.

Two phases: "light" (a couple of conversations, so nothing queues and the
overhead is the gateway's own work) and "loaded" (many concurrent
conversations, for throughput). Printed for each: turns/s, end-to-end latency,
and the gateway's overhead per turn (end-to-end minus the fake model's fixed
latency) at p50/p99, with the part of it spent inside the LLM call (litellm
and HTTP); the rest is the pipeline, prompt assembly, recall, commit and
delivery (and, when loaded, waiting for a CPU or a worker).

    python bench/agents.py                          # ~1 minute on 2 cores
    python bench/agents.py -n 100 -m 5 -w 64 --latency 0.3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gateway import Reply, ReplyAddress, SendResult  # noqa: E402
from gateway.testing import FakeAdapter, running_gateway, test_config  # noqa: E402
from storage import create_database, drop_database, start_embedded  # noqa: E402

_FAKE_SERVER = """
import asyncio, sys
sys.path.insert(0, {root!r})
from tests.fakes.llm import ANY_MODEL, start_fake_llm

async def main():
    async with start_fake_llm() as fake:
        fake.set_latency(ANY_MODEL, {latency!r})
        print(fake.api_base, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


class TimedAdapter(FakeAdapter):
    """The fake channel, noting when each reply was handed to ``send``."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        now = time.perf_counter()
        key = reply.text.removeprefix("echo: ")
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        return SendResult(platform_message_id=key)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def conversation(h: Any, adapter: TimedAdapter, conv: str, messages: int,
                       latencies: list[float]) -> None:
    loop = asyncio.get_running_loop()
    for m in range(messages):
        text = f"conversation {conv} message {m}: what do you think about that?"
        waiter: asyncio.Future[float] = loop.create_future()
        adapter.waiters[text] = waiter
        started = time.perf_counter()
        await adapter.inject(text, conversation=conv, sender=f"user-{conv}")
        done = await asyncio.wait_for(waiter, 120)
        latencies.append(done - started)


async def run(args: argparse.Namespace, api_base: str, work: Path) -> None:
    souls = work / "soul"
    souls.mkdir()
    (souls / "assistant.md").write_text(
        "---\nname: assistant\nskills: [memory]\nmemory:\n  recall: 5\n---\n"
        "You are a helpful assistant. Be concise.\n")
    server = await asyncio.to_thread(start_embedded, work / "pg")
    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    url = await create_database(server, db_name)
    config = test_config({
        "workers": {"dispatch": args.workers, "delivery": 4},
        "database": {"pool_max": max(10, args.workers + 6)},
        "agents": {"soul_dir": str(souls)},
        "models": {"default": {"model": "openai/bench-model", "api_base": api_base,
                               "api_key": "sk-bench", "timeout": 30.0}},
    })
    adapter = TimedAdapter()
    phases = [("light", args.light, args.messages * 2), ("loaded", args.conversations, args.messages)]
    results: list[tuple[str, int, int, list[float], float, list[float]]] = []
    try:
        async with running_gateway(url, config=config, adapter=adapter) as h:
            from agents.llm import load_litellm

            await load_litellm()
            # warm-up: the Router, the HTTP connection pool, Postgres plans
            await asyncio.gather(*(conversation(h, adapter, f"warm-{i}", 1, [])
                                   for i in range(min(args.workers, 8))))
            for name, conversations, messages in phases:
                latencies: list[float] = []
                started = time.perf_counter()
                await asyncio.gather(*(conversation(h, adapter, f"{name}-{i}", messages, latencies)
                                       for i in range(conversations)))
                elapsed = time.perf_counter() - started
                runs = await h.gateway.store.runs.recent(limit=100_000)
                llm_ms = [r["latency_ms"] for r in runs if r["success"] and r["detail"].get("kind") == "chat"
                          and r["conversation_key"].startswith(f"fake:test:{name}-")]
                results.append((name, conversations, messages, latencies, elapsed, llm_ms))
    finally:
        await drop_database(server, db_name)
    ms = args.latency * 1000
    rows: list[tuple[str, ...]] = [("", *(f"{n}: {c} conv x {m}" for n, c, m, *_ in results))]

    def row(label: str, values: list[str]) -> None:
        rows.append((label, *values))

    row("turns/s", [f"{len(lat) / el:.1f}" for _n, _c, _m, lat, el, _l in results])
    for q in (0.5, 0.99):
        tag = f"p{round(q * 100)}"
        row(f"end-to-end ms {tag}", [f"{pct([x * 1000 for x in lat], q):.1f}" for *_, lat, _e, _l in results])
        row(f"gateway overhead ms {tag}",
            [f"{pct([x * 1000 - ms for x in lat], q):.1f}" for *_, lat, _e, _l in results])
        row(f"  in the LLM call (litellm+HTTP) {tag}",
            [f"{pct([x - ms for x in llm], q):.1f}" for *_, llm in results])
    row("mean gateway overhead ms", [f"{statistics.fmean(x * 1000 - ms for x in lat):.1f}"
                                     for *_, lat, _e, _l in results])
    print(f"\nsoulgate agent turns — fake LLM latency {ms:.0f} ms (its own process), {args.workers} dispatch "
          f"workers, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("gateway overhead = end-to-end (admit to send) minus the model's fixed latency\n")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--conversations", type=int, default=50, help="conversations in the loaded phase")
    parser.add_argument("--light", type=int, default=2, help="conversations in the light phase")
    parser.add_argument("-m", "--messages", type=int, default=4, help="messages per conversation")
    parser.add_argument("-w", "--workers", type=int, default=32, help="dispatch workers")
    parser.add_argument("--latency", type=float, default=0.3, help="the fake model's latency in seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="soulgate-bench-agents-"))
    # The fake model runs in its own process: its CPU is not the gateway's.
    fake = subprocess.Popen(
        [sys.executable, "-c", _FAKE_SERVER.format(root=str(ROOT), latency=args.latency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert fake.stdout is not None
        asyncio.run(run(args, fake.stdout.readline().strip(), work))
    finally:
        if fake.stdin is not None:
            fake.stdin.close()
        fake.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
