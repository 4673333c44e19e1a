"""Rate-limited fakes of tests/fakes in a process of their own, for bench/outbound.py.

A platform is not stalled by the gateway's event loop, so the fakes must not
share it: an arrival stamped late by a busy loop makes the next one look early.

Usage: ``python bench/_outbound_fakes.py``; then one JSON command per stdin line,
one JSON answer per stdout line:

- ``["start", tag, teams_token]``: a set of fakes — Telegram bots ``chat``,
  ``distinct`` and ``group`` (Telegram's documented limits on), Slack (one post
  per second per channel), Teams (per-conversation limits; ``teams_token``:
  the connector wants a bearer token) — answered with their addresses;
- ``["install", tag, url]``: POST a signed Teams ``conversationUpdate`` (the app
  was installed in a personal chat) to ``url``; answers status and conversation id;
- ``["dump", tag]``: per burst the accepted arrival times (seconds, one clock per
  burst) and the 429s answered;
- ``["stop", tag]``.

It exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.slack import FakeSlack
from tests.fakes.teams import FakeTeams
from tests.fakes.telegram import FakeTelegram, RateLimits, SentMessage

BOTS = ("chat", "distinct", "group")


class StampedTelegram(FakeTelegram):
    """The fake Bot API, also noting when (monotonic) each message was accepted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted: list[float] = []

    async def _record(self, record: SentMessage, into: list[SentMessage]) -> None:
        self.accepted.append(time.monotonic())
        await super()._record(record, into)


class FakeSet:
    def __init__(self, tag: str, teams_token: bool) -> None:
        self.bots = {name: StampedTelegram(f"{7000 + i}:{tag}{name}", rate_limits=RateLimits())
                     for i, name in enumerate(BOTS)}
        self.slack = FakeSlack(channel_post_interval=1.0)
        self.teams = FakeTeams(enforce_limits=True, require_outbound_token=teams_token)

    async def start(self) -> dict[str, Any]:
        for bot in self.bots.values():
            await bot.start()
        await self.slack.start()
        await asyncio.to_thread(self.teams.start)
        t, ws = self.teams, self.slack.workspace
        return {
            "tg": {name: {"token": bot.token, "base_url": bot.base_url} for name, bot in self.bots.items()},
            "slack": {"base_url": self.slack.base_url, "token": ws.token, "team_id": ws.team_id,
                      "signing_secret": self.slack.signing_secret},
            "teams": {"app_id": t.app_id, "app_password": t.app_password, "tenant_id": t.tenant_id,
                      "ca_file": t.ca_file, "openid_metadata_url": t.openid_metadata_url,
                      "emulator_openid_metadata_url": t.emulator_openid_metadata_url,
                      "login_url": t.login_url, "base_url": t.base_url, "service_url": t.service_url},
        }

    async def install(self, url: str) -> dict[str, Any]:
        activity = self.teams.conversation_update(conversation_type="personal")
        posted = await self.teams.post_activity(url, activity)
        return {"status": posted.status, "conversation": activity["conversation"]["id"]}

    def dump(self) -> dict[str, Any]:
        out = {name: {"accepted": bot.accepted, "refused": bot.count_429} for name, bot in self.bots.items()}
        out["slack"] = {"accepted": [float(p.ts) for p in self.slack.posts],
                        "refused": sum(self.slack.channel_429s.values())}
        out["teams"] = {"accepted": [c.at for c in self.teams.activities],
                        "refused": sum(self.teams.throttled.values())}
        return out

    async def stop(self) -> None:
        await asyncio.to_thread(self.teams.stop)
        await self.slack.stop()
        for bot in self.bots.values():
            await bot.stop()


async def main() -> None:
    sets: dict[str, FakeSet] = {}
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            command, tag, *rest = json.loads(line)
            answer: Any = None
            if command == "start":
                sets[tag] = FakeSet(tag, bool(rest[0]))
                answer = await sets[tag].start()
            elif command == "install":
                answer = await sets[tag].install(rest[0])
            elif command == "dump":
                answer = sets[tag].dump()
            elif command == "stop":
                await sets.pop(tag).stop()
            print(json.dumps(answer), flush=True)
    finally:
        for fakes in sets.values():
            with contextlib.suppress(Exception):
                await fakes.stop()


if __name__ == "__main__":
    asyncio.run(main())
