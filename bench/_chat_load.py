"""Closed-loop load on the http channel (``POST /v1/chat/completions``), in its own process.

Usage: ``python bench/_chat_load.py '<json spec>'``; prints one JSON object.

Spec: ``urls`` (chat completion URLs, used round-robin like a load balancer in
front of the instances), ``key``, ``model``, ``concurrency`` (clients, each
sending its next request when its answer arrived, each its own conversation),
``warmup`` and ``duration`` seconds. Only requests sent after the warm-up and
answered before its end are counted. The result: ``completed``, ``errors``
(status -> count), ``seconds``, ``latency`` (seconds, one per counted request),
``cpu`` (this process's CPU seconds in the measured window).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    urls, concurrency = spec["urls"], int(spec["concurrency"])
    headers = {"Authorization": f"Bearer {spec['key']}"}
    loop = asyncio.get_running_loop()
    start = loop.time()
    begin, end = start + float(spec["warmup"]), start + float(spec["warmup"]) + float(spec["duration"])
    latency: list[float] = []
    errors: Counter[str] = Counter()
    cpu: list[float] = []

    async def client(n: int, http: aiohttp.ClientSession) -> None:
        url, i = urls[n % len(urls)], 0
        while loop.time() < end:
            body = {"model": spec["model"], "user": f"load-{n}",
                    "messages": [{"role": "user", "content": f"hello {n}-{i}"}]}
            sent = loop.time()
            try:
                async with http.post(url, json=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError as exc:
                status, _ = 0, exc
            done = loop.time()
            if status != 200:
                errors[str(status)] += 1
            elif sent >= begin and done <= end:
                latency.append(done - sent)
            i += 1

    async def mark() -> None:
        await asyncio.sleep(max(0.0, begin - loop.time()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu.append(time.process_time())

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(mark(), *(client(n, http) for n in range(concurrency)))
    return {"completed": len(latency), "errors": dict(errors), "seconds": float(spec["duration"]),
            "latency": latency, "cpu": cpu[1] - cpu[0]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
