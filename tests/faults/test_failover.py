"""Poller leader failover: two gateway processes on one database poll one Telegram bot.

One process leads the bot's ``getUpdates`` loop (a Postgres advisory lock on a
dedicated connection); the test kills it with SIGKILL while updates keep
arriving. The lock dies with the killed process's connection, the other process
takes the lead, and every update pushed before, during and after the kill is
admitted exactly once and answered exactly once (counted at the fake Bot API).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from tests.fakes.telegram import FakeTelegram, start_fake_telegram

from .ledger import load_threads, reconcile, settled
from .procs import GatewayProcess

#: the inbox lease of these gateways; the issue asks for a takeover "within the lease time"
LEASE_SECONDS = 10.0
MAX_ATTEMPTS = 8
FIRST_CHAT = 500_000


def gateway_config(database_url: str, tg: FakeTelegram) -> dict[str, Any]:
    return {
        "database": {"url": database_url},
        "workers": {"dispatch": 2, "delivery": 2, "lease_seconds": LEASE_SECONDS, "idle_poll_seconds": 0.5},
        "delivery": {"max_attempts": MAX_ATTEMPTS, "backoff_base_seconds": 0.2, "backoff_max_seconds": 2.0},
        "gateway": {"shutdown_grace_seconds": 2.0},
        "plugins": {"modules": ["tests.faults.echo_plugin"]},
        "channels": {"telegram": {"main": {
            "token": tg.token, "api_base": tg.base_url, "poll_timeout": 1,
            # a process killed mid-send parks that row instead of posting it again
            "delivery_policy": "never_twice",
        }}},
    }


async def polling(gw: GatewayProcess) -> bool:
    status = await gw.admin("/api/status")
    [tg] = [a for a in status["adapters"] if a["channel"] == "telegram"]
    return bool(tg.get("polling"))


async def wait_for_leader(*gws: GatewayProcess, within: float = 60.0) -> GatewayProcess:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        leading = [gw for gw in gws if gw.running() and await polling(gw)]
        assert len(leading) <= 1, f"two pollers lead at once: {[g.name for g in leading]}"
        if leading:
            return leading[0]
        assert loop.time() < deadline, "no instance took the poller lead"
        await asyncio.sleep(0.1)


class Pusher:
    """Pushes one private message per new chat, so each chat holds exactly one question."""

    def __init__(self, tg: FakeTelegram) -> None:
        self.tg = tg
        self.chats: list[int] = []

    def push(self, phase: str) -> None:
        chat = FIRST_CHAT + len(self.chats)
        self.chats.append(chat)
        self.tg.push_private_text(f"{phase} {chat}", user_id=chat)

    async def steady(self, phase: str, count: int, interval: float = 0.05) -> None:
        for _ in range(count):
            self.push(phase)
            await asyncio.sleep(interval)


async def test_poller_leader_killed_the_other_takes_over(soulgate_database_url: str, tmp_path: Path) -> None:
    async with start_fake_telegram() as tg:
        config = gateway_config(soulgate_database_url, tg)
        a, b = GatewayProcess("a", tmp_path, config), GatewayProcess("b", tmp_path, config)
        pusher = Pusher(tg)
        try:
            await asyncio.gather(a.start(), b.start())
            leader = await wait_for_leader(a, b)
            follower = b if leader is a else a

            await pusher.steady("before", 20)
            await tg.wait_for_messages(count=20, within=30)

            during = asyncio.create_task(pusher.steady("during", 60))  # 3 s of updates
            await asyncio.sleep(1.0)
            leader.kill()
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            new_leader = await wait_for_leader(a, b, within=LEASE_SECONDS * 3)
            takeover = loop.time() - killed_at
            assert new_leader is follower
            await during
            await pusher.steady("after", 20)

            # Every update stored and every reply settled (sent, or parked if the kill cut its send).
            state = await settled(soulgate_database_url, len(pusher.chats), within=60)
            assert not state.startswith("NOT SETTLED"), state
            await asyncio.sleep(2.0)  # time for a late duplicate to show up

            delivered = Counter(s.chat_id for s in tg.sent)
            threads = await load_threads(soulgate_database_url, "telegram")
            books = reconcile([str(c) for c in pusher.chats], {str(k): v for k, v in delivered.items()},
                              threads, max_attempts=MAX_ATTEMPTS, label="chat ")
            assert not books.problems, "\n".join(books.problems) + "\n" + follower.log_tail()
            # Parked rows are the only allowed gap, and only for a send the kill cut off.
            assert books.parked <= 2, books.summary()
            for chat in pusher.chats:
                texts = [s.text for s in tg.sent_to(chat)]
                assert all(t is not None and t.endswith(f" {chat}") for t in texts), (chat, texts)
            print(f"\nfailover: {len(pusher.chats)} updates, takeover after {takeover:.1f}s; {books.summary()}")
            assert takeover < LEASE_SECONDS, f"takeover took {takeover:.1f}s"
            # The survivor leads from now on; the killed one wrote nothing after the kill.
            assert await polling(new_leader)
        finally:
            for gw in (a, b):
                if gw.running():
                    await gw.stop()
