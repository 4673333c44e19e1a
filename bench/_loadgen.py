"""HTTP load generator for the benchmarks, run in its own process by ``bench._common.run_load``.

Usage: ``python bench/_loadgen.py '<json spec>'``; prints one JSON object.

Every request is a Slack Events API ``event_callback`` carrying a direct message
``msg <tag>-<i>``, signed with ``secret`` exactly as Slack signs it (the
signing helpers of tests/fakes/slack.py), spread round-robin over ``channels``
DM channels. Bodies and signatures are built before the clock starts so the
generator spends its CPU on HTTP only.

- ``mode = "open"``: request ``i`` is sent at ``start + i / rate`` whether or not
  earlier ones were answered (an open loop: a slow server does not slow the
  offered load down); ``lag`` is how late the generator itself was.
- ``mode = "closed"``: ``concurrency`` senders each send the next request as
  soon as their previous one is answered (for the maximum throughput).

Both stop after ``count`` requests or ``duration`` seconds, whichever is first,
and then wait (bounded) for the answers still outstanding.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.slack import DEFAULT_SIGNING_SECRET, event_callback, message_event, signed_headers


def build(spec: dict[str, Any], count: int) -> list[tuple[bytes, dict[str, str]]]:
    tag, channels = spec.get("tag", "run"), int(spec.get("channels", 100))
    secret = spec.get("secret", DEFAULT_SIGNING_SECRET)
    out = []
    for i in range(count):
        c = i % channels
        event = message_event(f"msg {tag}-{i}", channel=f"DBENCH{c:06d}", user=f"UBENCH{c:06d}")
        body = json.dumps(event_callback(event)).encode()
        out.append((body, signed_headers(body, secret)))
    return out


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    mode = spec["mode"]
    duration = float(spec.get("duration", 10.0))
    rate = float(spec.get("rate", 0) or 0)
    count = int(spec.get("count") or (rate * duration + 1 if mode == "open" else 20_000))
    bodies = build(spec, count)
    url = spec["url"]
    n = len(bodies)
    send = [0.0] * n
    latency = [float("nan")] * n
    status = [-2] * n  # -2: never sent
    lag: list[float] = []
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 30.0)))
    limit = int(spec.get("concurrency", 64)) if mode == "closed" else int(spec.get("max_connections", 512))
    loop = asyncio.get_running_loop()

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body, headers = bodies[i]
        send[i] = time.time()
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                status[i] = resp.status
        except TimeoutError:
            status[i] = -1
        except aiohttp.ClientError:
            status[i] = 0
        latency[i] = time.perf_counter() - started

    cpu0 = time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), timeout=timeout) as session:
        start = loop.time() + 0.1
        deadline = start + duration
        if mode == "open":
            tasks = []
            for i in range(n):
                target = start + i / rate
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if loop.time() > deadline:
                    break
                lag.append(loop.time() - target)
                tasks.append(asyncio.create_task(one(session, i)))
            sent_until = loop.time()
            await asyncio.wait(tasks, timeout=float(spec.get("drain", 30.0))) if tasks else None
        else:
            counter = iter(range(n))

            async def sender() -> None:
                for i in counter:
                    if loop.time() > deadline:
                        return
                    await one(session, i)

            await asyncio.sleep(max(0.0, start - loop.time()))
            await asyncio.gather(*(sender() for _ in range(limit)))
            sent_until = loop.time()
        elapsed = sent_until - start
    sent = [i for i in range(n) if status[i] != -2]
    return {
        "mode": mode, "elapsed": elapsed, "cpu": time.process_time() - cpu0,
        "send": [send[i] for i in sent], "latency": [latency[i] for i in sent],
        "status": [status[i] for i in sent], "index": sent, "lag": lag,
    }


if __name__ == "__main__":
    result = asyncio.run(run(json.loads(sys.argv[1])))
    sys.stdout.write(json.dumps(result))
