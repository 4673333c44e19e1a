"""The fake LLM and fake Slack of tests/fakes, in a process of their own (for the benchmarks).

Usage: ``python bench/_fakes.py [llm_latency_seconds]``. Prints one JSON line
(``llm`` api_base, ``slack`` base URL, ``token``, ``secret``), then answers
commands read from stdin, one JSON line each:

- ``dump``: what arrived since the last dump — LLM chat requests as
  ``[last user text, received, answered]`` and Slack Web API calls as
  ``[method, text, received]`` (wall-clock seconds, comparable across processes);
- ``cpu``: this process's CPU seconds so far.

It exits when stdin closes. The LLM answers ``echo: <last user text>``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.llm import ANY_MODEL, RecordedRequest, Text, start_fake_llm
from tests.fakes.slack import DEFAULT_SIGNING_SECRET, start_fake_slack


async def main(latency: float) -> None:
    answered: list[list[Any]] = []

    def hook(record: RecordedRequest) -> Text:
        text = record.last_user_text
        answered.append([text, record.received_at, time.time()])
        return Text(f"echo: {text}")

    async with start_fake_llm() as llm, start_fake_slack() as slack:
        llm.on_request(ANY_MODEL, hook)
        if latency:
            llm.set_latency(ANY_MODEL, latency)
        print(json.dumps({"llm": llm.api_base, "slack": slack.base_url, "token": slack.workspace.token,
                          "secret": DEFAULT_SIGNING_SECRET}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            command = line.strip()
            out: dict[str, Any]
            if command == "dump":
                # ApiCall.at is monotonic; shift it onto the wall clock the other processes use.
                shift = time.time() - time.monotonic()
                calls = [[c.method, str(c.args.get("text", "")), c.at + shift] for c in slack.calls]
                out = {"llm": answered[:], "slack": calls}
                answered.clear()
                slack.calls.clear()
                slack.posts.clear()
                llm.requests.clear()
            elif command == "cpu":
                out = {"cpu": time.process_time()}
            else:
                out = {"error": f"unknown command {command!r}"}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0))
