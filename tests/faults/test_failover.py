"""Poller leader failover: two gateway processes on one database share a Telegram bot (polling)
and an IMAP mailbox.

One process leads each poller (a Postgres advisory lock on a dedicated
connection). The test lets process A lead both, starts process B, and kills A
with SIGKILL while Telegram updates and mails keep arriving. The locks die with
A's connections, B takes the lead of both, and every update and mail pushed
before, during and after the kill is admitted exactly once and answered exactly
once (counted at the fake Bot API and the SMTP server).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.fakes.mailserver import start_imap_server, start_smtp_server
from tests.fakes.telegram import start_fake_telegram

from .chaos_channels import Driver, EmailDriver, TelegramDriver
from .ledger import load_threads, reconcile, settled
from .procs import GatewayProcess

#: the inbox lease of these gateways; the issue asks for a takeover "within the lease time"
LEASE_SECONDS = 10.0
MAX_ATTEMPTS = 8
#: what each channel's status calls leading its poller
LEAD_FLAG = {"telegram": "polling", "email": "leading"}


def gateway_config(database_url: str, drivers: list[Driver]) -> dict[str, Any]:
    return {
        "database": {"url": database_url},
        "workers": {"dispatch": 2, "delivery": 2, "lease_seconds": LEASE_SECONDS, "idle_poll_seconds": 0.5},
        "delivery": {"max_attempts": MAX_ATTEMPTS, "backoff_base_seconds": 0.2, "backoff_max_seconds": 2.0},
        "gateway": {"shutdown_grace_seconds": 2.0},
        "plugins": {"modules": ["tests.faults.echo_plugin"]},
        # never_twice: a process killed mid-send parks that row instead of posting it again
        "channels": {d.name: {"main": d.config("")} for d in drivers},
    }


async def leads(gw: GatewayProcess) -> set[str]:
    """The channels whose poller this process leads now."""
    if not gw.running():
        return set()
    status = await gw.admin("/api/status")
    return {a["channel"] for a in status["adapters"] if a.get(LEAD_FLAG.get(a["channel"], ""))}


async def wait_for_leader(gws: list[GatewayProcess], channels: set[str], *, within: float) -> GatewayProcess:
    """The one process that leads every poller in ``channels``; never two leaders of one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        led = {gw.name: await leads(gw) for gw in gws}
        for channel in channels:
            leaders = [name for name, chans in led.items() if channel in chans]
            assert len(leaders) <= 1, f"{channel}: two pollers lead at once: {leaders}"
        full = [gw for gw in gws if channels <= led[gw.name]]
        if full:
            return full[0]
        assert loop.time() < deadline, f"no process leads {channels} after {within}s: {led}"
        await asyncio.sleep(0.1)


class Load:
    """Messages round-robin over the channels, each in a conversation of its own."""

    def __init__(self, drivers: list[Driver]) -> None:
        self.drivers = drivers
        self.sent = 0

    async def steady(self, count: int, interval: float = 0.05) -> None:
        for _ in range(count):
            i, self.sent = self.sent, self.sent + 1
            await self.drivers[i % len(self.drivers)].send(i, "")
            await asyncio.sleep(interval)

    def keys(self, driver: Driver) -> list[str]:
        n = self.drivers.index(driver)
        return [driver.key(i) for i in range(n, self.sent, len(self.drivers))]


async def test_poller_leader_killed_the_other_takes_over(soulgate_database_url: str, tmp_path: Path) -> None:
    async with start_fake_telegram() as tg, start_imap_server() as imap, start_smtp_server() as smtp:
        drivers: list[Driver] = [TelegramDriver(tg), EmailDriver(imap, smtp)]
        pollers = {d.name for d in drivers}
        config = gateway_config(soulgate_database_url, drivers)
        a, b = GatewayProcess("a", tmp_path, config), GatewayProcess("b", tmp_path, config)
        load = Load(drivers)
        loop = asyncio.get_running_loop()
        try:
            await a.start()
            assert await wait_for_leader([a], pollers, within=30) is a
            await b.start()  # B waits for the locks; A keeps both
            assert await wait_for_leader([a, b], pollers, within=5) is a

            await load.steady(20)
            await asyncio.sleep(0.5)
            during = asyncio.create_task(load.steady(60))  # 3 s of updates and mails
            await asyncio.sleep(1.0)
            a.kill()
            killed_at = loop.time()
            assert await wait_for_leader([a, b], pollers, within=LEASE_SECONDS * 3) is b
            takeover = loop.time() - killed_at
            await during
            await load.steady(20)

            # Every message stored and every reply settled (sent, or parked if the kill cut its send).
            state = await settled(soulgate_database_url, load.sent, within=60)
            assert not state.startswith("NOT SETTLED"), state + "\n" + b.log_tail()
            await asyncio.sleep(2.0)  # time for a late duplicate to show up

            problems, summary = [], []
            for d in drivers:
                threads = await load_threads(soulgate_database_url, d.name, d.key_field)
                books = reconcile(load.keys(d), d.delivered(), threads, max_attempts=MAX_ATTEMPTS,
                                  label=f"{d.name} ")
                problems += books.problems
                summary.append(f"{d.name}: {books.summary()}")
                # Parked rows are the only allowed gap, and only for a send the kill cut off.
                assert books.parked <= 2 and not books.dead, books.summary()
            print(f"\nfailover: {load.sent} messages, takeover after {takeover:.1f}s; " + "; ".join(summary))
            assert not problems, "\n".join(problems) + "\n" + b.log_tail()
            for i in range(0, load.sent, len(drivers)):  # Telegram's share: each reply answers its update
                texts = [m.text for m in tg.sent_to(int(drivers[0].key(i)))]
                assert all(t == f"echo: chaos {i}" for t in texts), (i, texts)
            assert takeover < LEASE_SECONDS, f"takeover took {takeover:.1f}s"
            assert await leads(b) == pollers  # the survivor leads from now on
        finally:
            for gw in (a, b):
                if gw.running():
                    await gw.stop()
