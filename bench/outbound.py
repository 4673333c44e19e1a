"""Outbound compliance benchmark: bursts through the gateway's delivery path against rate-limited fakes.

Every burst is queued at once — proactive sends (``services.send``) to one
Telegram chat, one Telegram group, one Slack channel and one Teams conversation,
and outbox rows to many distinct Telegram chats (one destination each, as
replies to that many conversations would be) — and delivered by the real
delivery workers and adapters (aiogram, slack-sdk, botbuilder) to the fakes of
tests/fakes with their rate-limit enforcement on: Telegram 1/s per chat,
20/min per group, 30/s per bot (sliding windows); Slack one post per second
per channel (strict); Teams 7/1 s, 60/30 s, 1800/h per conversation.

The baseline is a bare client measured at the same time against fakes of its
own: raw HTTP posts on a fixed schedule at exactly the documented rate (retrying
after Retry-After on a 429). The fakes run in a process of their own
(bench/_outbound_fakes.py), as a platform would: a loop shared with the gateway
would stamp arrivals late whenever the gateway is busy. Each burst runs on its own fake (and its own
Telegram bot), so the bursts do not share limits; they share the gateway's
delivery workers, as they would in production.

Two phases. "alone": each burst through a gateway of its own (own database,
own delivery workers), all at the same time, with the baseline beside them —
this measures each adapter's buckets. "together": every burst through one
gateway, as production would see a broadcast while conversations go on — this
shows what the bursts do to each other through the shared delivery workers.

Reported per burst: 429s answered (target < 0.1% of messages), effective
throughput = (messages - 1) / (last accepted - first accepted) against the
documented rate (target >= 0.9x) and the baseline, and the longest gap between
two accepted messages.

    python bench/outbound.py            # scaled-down bursts, ~1.5 minutes
    python bench/outbound.py --full     # the issue's sizes (100 / 1000 / 100; ~12 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

import adapters.teams as teams
from bench._common import BENCH, embedded_server, fmt, fresh_database, loadavg, machine, quiet_logging, table
from gateway import Reply, ReplyAddress, hookimpl
from gateway.runtime import Gateway
from gateway.testing import test_config
from storage import PendingChunk
from tests.fakes.teams import LoopbackCredentialFactory

GROUP_CHAT, PRIVATE_CHAT, SLACK_CHANNEL = -1001234567890, 1001, "C0BENCH"
BURSTS = ("chat", "distinct", "group", "slack", "teams")
#: (name, documented messages/s, the rule) per burst
RULES = {
    "chat": ("telegram, one chat", 1.0, "1/s per chat"),
    "distinct": ("telegram, distinct chats", 30.0, "30/s per bot"),
    "group": ("telegram, one group", 20 / 60, "20/min per group"),
    "slack": ("slack, one channel", 1.0, "1/s per channel"),
    "teams": ("teams, one conversation", 2.0, "60/30s per conversation"),
}


@dataclass
class Burst:
    key: str
    messages: int
    accepted: list[float] = field(default_factory=list)  # arrival times at the fake (one clock per burst)
    refused: int = 0  # 429s the fake answered

    @property
    def name(self) -> str:
        return RULES[self.key][0]

    @property
    def documented(self) -> float:
        return RULES[self.key][1]

    def result(self) -> tuple[int, float, float]:
        """(429s, effective messages/s, longest gap in seconds)."""
        stamps = sorted(self.accepted)
        span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
        gap = max((b - a for a, b in itertools.pairwise(stamps)), default=float("nan"))
        return self.refused, (len(stamps) - 1) / span if span > 0 else float("nan"), gap


class FakesProcess:
    """bench/_outbound_fakes.py: sets of rate-limited fakes in their own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "_outbound_fakes.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lock = asyncio.Lock()

    def _ask(self, *command: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bench/_outbound_fakes.py died")
        return json.loads(line)

    async def ask(self, *command: Any) -> Any:
        async with self._lock:  # one question at a time on the pipe
            return await asyncio.to_thread(self._ask, *command)

    async def fill(self, tag: str, bursts: dict[str, Burst]) -> None:
        dumped = await self.ask("dump", tag)
        for key, burst in bursts.items():
            burst.accepted, burst.refused = dumped[key]["accepted"], dumped[key]["refused"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Fakes:
    tag: str
    info: dict[str, Any]
    process: FakesProcess


@contextlib.asynccontextmanager
async def started_fakes(process: FakesProcess, tag: str, teams_token: bool) -> AsyncIterator[Fakes]:
    info = await process.ask("start", tag, teams_token)
    try:
        yield Fakes(tag, info, process)
    finally:
        await process.ask("stop", tag)


# -- the gateway ---------------------------------------------------------------------------------


def teams_plugin(t: dict[str, Any]) -> types.SimpleNamespace:
    """The built-in Teams plugin with the fake's loopback credentials (as tests/adapters/test_teams.py)."""
    factory = LoopbackCredentialFactory(t["app_id"], t["app_password"], ca_file=t["ca_file"])

    @hookimpl
    def soulgate_adapters() -> list[Any]:
        return [teams.adapter_spec(credentials_factory=factory)]

    return types.SimpleNamespace(soulgate_adapters=soulgate_adapters)


def gateway_config(fakes: Fakes, workers: int, keys: set[str]) -> Any:
    """A gateway with only the accounts the bursts ``keys`` need."""
    channels: dict[str, Any] = {}
    tg = {name: {"token": bot["token"], "api_base": bot["base_url"], "poll_timeout": 5}
          for name, bot in fakes.info["tg"].items() if name in keys}
    if tg:
        channels["telegram"] = tg
    if "slack" in keys:
        slack = fakes.info["slack"]
        channels["slack"] = {"main": {"bot_token": slack["token"], "signing_secret": slack["signing_secret"],
                                      "api_base_url": slack["base_url"]}}
    if "teams" in keys:
        t = fakes.info["teams"]
        channels["teams"] = {"main": {
            "app_id": t["app_id"], "app_password": t["app_password"], "app_type": "MultiTenant",
            "allowed_tenants": [t["tenant_id"]],
            "endpoints": {
                "to_bot_from_channel_openid_metadata_url": t["openid_metadata_url"],
                "to_bot_from_emulator_openid_metadata_url": t["emulator_openid_metadata_url"],
                "to_channel_from_bot_login_url": t["login_url"],
                "oauth_url": f"{t['base_url']}/oauth", "validate_authority": False,
            },
        }}
    return test_config({
        "workers": {"delivery": workers, "idle_poll_seconds": 2.0},
        "plugins": {"disabled": ["teams"]},
        "channels": channels,
    })


async def gateway_bursts(gw: Gateway, fakes: Fakes, sizes: dict[str, int]) -> None:
    """Queue the bursts of ``sizes`` at once, the way a plugin or the admin API would."""
    jobs: list[Awaitable[Any]] = []

    async def serial(target: ReplyAddress | str, n: int, label: str) -> None:
        for i in range(n):
            await gw.services.send(target, f"{label} {i}")

    if "teams" in sizes:
        url = f"http://127.0.0.1:{gw.public_port}/api/messages"
        installed = await fakes.process.ask("install", fakes.tag, url)
        if installed["status"] != 200:
            raise RuntimeError(f"the Teams install activity was refused: {installed}")
        jobs.append(serial(f"teams:main:{installed['conversation']}:", sizes["teams"], "teams"))
    if "chat" in sizes:
        chat = ReplyAddress("telegram", "chat", {"chat_id": PRIVATE_CHAT, "chat_type": "private"})
        jobs.append(serial(chat, sizes["chat"], "chat"))
    if "group" in sizes:
        group = ReplyAddress("telegram", "group", {"chat_id": GROUP_CHAT, "chat_type": "supergroup"})
        jobs.append(serial(group, sizes["group"], "group"))
    if "slack" in sizes:
        channel = {"team": fakes.info["slack"]["team_id"], "channel": SLACK_CHANNEL}
        jobs.append(serial(ReplyAddress("slack", "main", channel), sizes["slack"], "slack"))
    if "distinct" in sizes:
        adapter, chunks = gw.adapters[("telegram", "distinct")], []
        for i in range(sizes["distinct"]):
            address = ReplyAddress("telegram", "distinct", {"chat_id": 100_000 + i, "chat_type": "private"})
            [chunk] = adapter.render(Reply(text=f"broadcast {i}"))
            chunks.append(PendingChunk(0, address, f"telegram:distinct:{100_000 + i}:", chunk))
        jobs.append(gw.store.outbox.enqueue(chunks, 3600))  # one destination per chat
    await asyncio.gather(*jobs)


@contextlib.asynccontextmanager
async def running_gateway(server: str, fakes: Fakes, keys: set[str], workers: int) -> AsyncIterator[Gateway]:
    async with fresh_database(server) as url:
        plugins = [("teams-bench", teams_plugin(fakes.info["teams"]))] if "teams" in keys else []
        gw = Gateway(gateway_config(fakes, workers, keys), extra_plugins=plugins, entry_points=False,
                     database_url=url)
        await gw.start()
        try:
            yield gw
        finally:
            await gw.stop()


# -- the baseline: raw HTTP on a fixed schedule ------------------------------------------------


async def paced(n: int, rate: float, post: Callable[[int], Awaitable[tuple[int, float]]]) -> None:
    """Message ``i`` goes at ``start + i / rate``; a 429 is retried after its Retry-After."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        while True:
            status, retry_after = await post(i)
            if status != 429:
                break
            await asyncio.sleep(retry_after)


async def baseline_bursts(fakes: Fakes, bursts: list[Burst]) -> None:
    info = fakes.info
    async with aiohttp.ClientSession() as http:
        async def request(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, float]:
            async with http.post(url, json=body, headers=headers or {}) as resp:
                await resp.read()
                return resp.status, float(resp.headers.get("Retry-After", "1"))

        def telegram(name: str, chat: Callable[[int], int]) -> Callable[[int], Awaitable[tuple[int, float]]]:
            bot = info["tg"][name]
            return lambda i: request(f"{bot['base_url']}/bot{bot['token']}/sendMessage",
                                     {"chat_id": chat(i), "text": f"{name} {i}"})

        slack, slack_auth = info["slack"], {"Authorization": f"Bearer {info['slack']['token']}"}
        conversation = "a:1personalChatIdFakeTeams0001"
        teams_url = f"{info['teams']['service_url']}v3/conversations/{quote(conversation, safe='')}/activities"
        posts = {
            "chat": telegram("chat", lambda i: PRIVATE_CHAT),
            "distinct": telegram("distinct", lambda i: 100_000 + i),
            "group": telegram("group", lambda i: GROUP_CHAT),
            "slack": lambda i: request(f"{slack['base_url']}chat.postMessage",
                                       {"channel": SLACK_CHANNEL, "text": f"slack {i}"}, slack_auth),
            "teams": lambda i: request(teams_url, {"type": "message", "text": f"teams {i}"}),
        }
        await asyncio.gather(*(paced(b.messages, b.documented, posts[b.key]) for b in bursts))


# -- running and reporting -----------------------------------------------------------------------


async def wait_delivered(fakes: Fakes, bursts: dict[str, Burst], within: float) -> None:
    """Until every message reached its fake; the bursts then hold the fakes' numbers."""
    deadline = time.monotonic() + within
    while True:
        await fakes.process.fill(fakes.tag, bursts)
        if all(len(b.accepted) >= b.messages for b in bursts.values()):
            return
        if time.monotonic() > deadline:
            missing = {b.name: b.messages - len(b.accepted) for b in bursts.values()}
            raise TimeoutError(f"not delivered within {within:.0f}s: {missing}")
        await asyncio.sleep(0.5)


async def phase(process: FakesProcess, server: str, sizes: dict[str, int], args: argparse.Namespace,
                alone: bool) -> tuple[dict[str, Burst], dict[str, int]]:
    """Every burst through its own gateway (``alone``) or all through one; returns the bursts
    and the outbox counts afterwards (summed)."""
    groups = [{key} for key in sizes] if alone else [set(sizes)]
    async with started_fakes(process, "A" if alone else "T", True) as fakes, contextlib.AsyncExitStack() as stack:
        gateways = [await stack.enter_async_context(running_gateway(server, fakes, keys, args.workers))
                    for keys in groups]
        bursts = {key: Burst(key, n) for key, n in sizes.items()}
        await asyncio.gather(*(gateway_bursts(gw, fakes, {k: sizes[k] for k in keys})
                               for gw, keys in zip(gateways, groups, strict=True)))
        await wait_delivered(fakes, bursts, args.timeout)
        outbox: dict[str, int] = {}
        for gw in gateways:
            for status, n in (await gw.store.outbox.counts()).items():
                outbox[status] = outbox.get(status, 0) + n
        return bursts, outbox


async def run_baseline(process: FakesProcess, sizes: dict[str, int]) -> dict[str, Burst]:
    async with started_fakes(process, "B", False) as fakes:
        bursts = {key: Burst(key, n) for key, n in sizes.items()}
        await baseline_bursts(fakes, list(bursts.values()))
        await wait_delivered(fakes, bursts, 10)
        return bursts


def rows_of(label: str, bursts: dict[str, Burst], base: dict[str, Burst]) -> list[list[Any]]:
    rows = []
    for key, g in bursts.items():
        g_429, g_rate, g_gap = g.result()
        b_429, b_rate, _ = base[key].result()
        rows.append([f"{label}: {g.name}", RULES[key][2], g.messages, g_429, fmt(100 * g_429 / g.messages, 2),
                     fmt(g_rate, 3), fmt(g_rate / g.documented, 2), fmt(g_gap, 2), b_429, fmt(b_rate, 3),
                     fmt(g_rate / b_rate, 2)])
    return rows


async def amain(args: argparse.Namespace) -> None:
    sizes = ({"chat": 100, "distinct": 1000, "group": 100, "slack": 100, "teams": 100} if args.full else
             {"chat": args.chat, "distinct": args.distinct, "group": args.group, "slack": args.slack,
              "teams": args.teams})
    server = await asyncio.to_thread(embedded_server, args.data_dir)
    started, load_before = time.monotonic(), loadavg()
    process = FakesProcess()
    try:
        if args.together_only:
            base, rows, outboxes = await run_baseline(process, sizes), [], []
        else:
            (alone, outbox_alone), base = await asyncio.gather(phase(process, server, sizes, args, True),
                                                               run_baseline(process, sizes))
            rows = rows_of("alone", alone, base)
            outboxes = [f"alone {outbox_alone}"]
        if not args.alone_only:
            together, outbox_together = await phase(process, server, sizes, args, False)
            rows += rows_of("together", together, base)
            outboxes.append(f"together {outbox_together}")
    finally:
        await asyncio.to_thread(process.close)
    notes = [
        f"machine: {machine()}; load average {load_before} before, {loadavg()} after;"
        f" {args.workers} delivery workers per gateway; wall time {time.monotonic() - started:.0f}s",
        "alone: each burst through its own gateway (all at the same time, beside the baseline);"
        " together: all bursts through one gateway",
        "msgs/s: (delivered - 1) / (last accepted - first accepted) at the fake; x doc: against the documented"
        " rate (target >= 0.9); 429 %: target < 0.1; max gap: longest pause between two accepted messages",
        "baseline: raw HTTP posts at exactly the documented rate (no margin), retried after Retry-After on a 429",
        "outbox after the runs: " + "; ".join(outboxes),
    ]
    header = ["burst", "limit", "msgs", "429s", "429 %", "msgs/s", "x doc", "max gap s", "base 429s",
              "base msgs/s", "x base"]
    print(table("soulgate outbound compliance benchmark — bursts against rate-limited fakes", header, rows, notes),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat", type=int, default=20, help="messages to one Telegram chat (issue: 100)")
    parser.add_argument("--distinct", type=int, default=200, help="Telegram chats, one message each (issue: 1000)")
    parser.add_argument("--group", type=int, default=12, help="messages to one Telegram group (issue: 100)")
    parser.add_argument("--slack", type=int, default=20, help="messages to one Slack channel")
    parser.add_argument("--teams", type=int, default=60, help="messages to one Teams conversation")
    parser.add_argument("--full", action="store_true", help="the issue's sizes: 100, 1000, 100, 100, 100")
    parser.add_argument("--alone-only", action="store_true", help="skip the phase with one shared gateway")
    parser.add_argument("--together-only", action="store_true", help="skip the phase with a gateway per burst")
    parser.add_argument("--workers", type=int, default=8, help="delivery workers")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every burst")
    parser.add_argument("--data-dir", help="embedded Postgres data directory (default: a fresh temp dir)")
    args = parser.parse_args()
    if min(args.chat, args.distinct, args.group, args.slack, args.teams) < 2:
        parser.error("every burst needs at least 2 messages")
    quiet_logging()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
