"""The platforms of the chaos test, each behind one small driver.

A driver knows its fake: the ``[channels.<name>.main]`` table that points a
gateway process at it, how to deliver inbound message ``i`` the way the
platform would (webhook platforms retry until the gateway answers 2xx, with the
same event id, as Slack and Teams do; polled platforms just hold the message),
how many sends the fake saw, how to make the next send fail (429 or 500), and
how many replies arrived per conversation. Message ``i`` always lives in a
conversation of its own, so a conversation's reply count is that message's.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any, ClassVar

import aiohttp

from tests.fakes import mailmessages as mm
from tests.fakes.mailserver import FakeImapServer, FakeSmtpServer
from tests.fakes.slack import FakeSlack, event_callback, message_event, post_signed
from tests.fakes.teams import FakeTeams
from tests.fakes.telegram import FakeTelegram

__all__ = ["Driver", "EmailDriver", "HttpDriver", "SlackDriver", "TeamsDriver", "TelegramDriver"]

RETRY_FIRST, RETRY_MAX = 0.5, 3.0  # seconds between a webhook platform's deliveries of one event
POLICY = "never_twice"  # every channel: "exactly one" is checkable, a cut-off send is parked


class Driver:
    name: ClassVar[str]
    #: the envelope field the ledger keys this channel's rows by
    key_field: ClassVar[str] = "conversation"
    #: can the fake fail a send on request?
    faults: ClassVar[bool] = True
    #: can it refuse one for good (the user blocked the bot, the channel is gone)?
    refusals: ClassVar[bool] = False

    def __init__(self) -> None:
        self.deliveries = 0  # webhook POSTs, successful or not
        self.refused = 0  # POSTs the gateway did not accept (down, restarting)

    def key(self, i: int) -> str:
        raise NotImplementedError

    def config(self, public_url: str) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, i: int, public_url: str) -> None:
        raise NotImplementedError

    def sends(self) -> int:
        raise NotImplementedError

    def fail_next(self, status: int) -> None:
        raise NotImplementedError

    def refuse_next(self) -> None:
        raise NotImplementedError

    def delivered(self) -> Counter[str]:
        raise NotImplementedError

    async def _until_accepted(self, post: Any) -> None:
        """Deliver again until the gateway answers 2xx (a platform's retries, compressed)."""
        attempt, delay = 0, RETRY_FIRST
        while True:
            self.deliveries += 1
            try:
                status = await post(attempt)
                if 200 <= status < 300:
                    return
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                pass
            self.refused += 1
            attempt += 1
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)


class TelegramDriver(Driver):
    name = "telegram"
    refusals = True

    def __init__(self, fake: FakeTelegram) -> None:
        super().__init__()
        self.fake = fake

    def key(self, i: int) -> str:
        return str(700_000 + i)  # a private chat's id is the user's id

    def config(self, public_url: str) -> dict[str, Any]:
        return {"token": self.fake.token, "api_base": self.fake.base_url, "poll_timeout": 1,
                "delivery_policy": POLICY}

    async def send(self, i: int, public_url: str) -> None:
        self.fake.push_private_text(f"chaos {i}", user_id=int(self.key(i)))

    def sends(self) -> int:
        return len(self.fake.calls.get("sendMessage", []))

    def fail_next(self, status: int) -> None:
        if status == 429:
            self.fake.flood_next("sendMessage", retry_after=1)
        else:
            self.fake.fail_next("sendMessage", error_code=status, description="Internal Server Error")

    def refuse_next(self) -> None:
        self.fake.fail_next("sendMessage", error_code=403, description="Forbidden: bot was blocked by the user")

    def delivered(self) -> Counter[str]:
        return Counter(str(s.chat_id) for s in self.fake.sent)


class SlackDriver(Driver):
    name = "slack"
    refusals = True

    def __init__(self, fake: FakeSlack) -> None:
        super().__init__()
        self.fake = fake

    def key(self, i: int) -> str:
        return f"DCHAOS{i:05d}"  # a DM channel of its own ("D…" ids are direct messages)

    def config(self, public_url: str) -> dict[str, Any]:
        return {"bot_token": self.fake.workspace.token, "signing_secret": self.fake.signing_secret,
                "api_base_url": self.fake.base_url, "ack_reaction": "", "delivery_policy": POLICY}

    async def send(self, i: int, public_url: str) -> None:
        payload = event_callback(message_event(f"chaos {i}", channel=self.key(i), user=f"UCHAOS{i:05d}"))
        url = f"{public_url}/slack/main/events"

        async def post(attempt: int) -> int:
            retry = {"retry_num": attempt, "retry_reason": "http_error"} if attempt else {}
            result = await post_signed(url, payload, self.fake.signing_secret, timeout=10, **retry)
            return result.status

        await self._until_accepted(post)

    def sends(self) -> int:
        return self.fake.count("chat.postMessage")

    def fail_next(self, status: int) -> None:
        if status == 429:
            self.fake.ratelimit("chat.postMessage", retry_after=1)
        else:
            self.fake.server_error("chat.postMessage", status=status)

    def refuse_next(self) -> None:
        self.fake.fail("chat.postMessage", "channel_not_found")

    def delivered(self) -> Counter[str]:
        return Counter(p.channel for p in self.fake.posts)


class TeamsDriver(Driver):
    name = "teams"
    _KINDS = ("send", "reply")

    def __init__(self, fake: FakeTeams) -> None:
        super().__init__()
        self.fake = fake

    def key(self, i: int) -> str:
        return f"a:1chaos{i:05d}"  # a personal (1:1) conversation of its own

    def config(self, public_url: str) -> dict[str, Any]:
        fake = self.fake
        return {
            "app_id": fake.app_id, "app_password": fake.app_password, "app_type": "MultiTenant",
            "allowed_tenants": [fake.tenant_id], "delivery_policy": POLICY,
            "endpoints": {
                "to_bot_from_channel_openid_metadata_url": fake.openid_metadata_url,
                "to_bot_from_emulator_openid_metadata_url": fake.emulator_openid_metadata_url,
                "to_channel_from_bot_login_url": fake.login_url,
                "oauth_url": f"{fake.base_url}/oauth",
                "validate_authority": False,
            },
        }

    async def send(self, i: int, public_url: str) -> None:
        activity = self.fake.personal_message(f"chaos {i}", conversation_id=self.key(i),
                                              activity_id=f"17{i:011d}", user_id=f"29:chaos{i}")
        url = f"{public_url}/api/messages"

        async def post(attempt: int) -> int:
            return (await self.fake.post_activity(url, activity, request_timeout=10)).status

        await self._until_accepted(post)

    def sends(self) -> int:
        return sum(1 for c in self.fake.calls if c.kind in self._KINDS)

    def fail_next(self, status: int) -> None:
        self.fake.fail_next(status, kinds=self._KINDS)

    def delivered(self) -> Counter[str]:
        return Counter(c.conversation_id or "" for c in self.fake.activities
                       if c.kind in self._KINDS and c.activity.get("type") == "message")


class EmailDriver(Driver):
    """IMAP in, SMTP out. The SMTP fake (aiosmtpd) has no scripted failures, so email sends
    are not faulted; kills still cut its IMAP polls and SMTP sessions."""

    name = "email"
    key_field = "sender"
    faults = False
    BOT = "bot@example.org"

    def __init__(self, imap: FakeImapServer, smtp: FakeSmtpServer) -> None:
        super().__init__()
        self.imap, self.smtp = imap, smtp

    def key(self, i: int) -> str:
        return f"chaos{i:05d}@example.org"

    def config(self, public_url: str) -> dict[str, Any]:
        return {
            "address": self.BOT, "backlog": "answer", "delivery_policy": POLICY,
            "imap": {"host": self.imap.host, "port": self.imap.port, "tls": "none", "user": self.imap.user,
                     "password": self.imap.password, "poll_interval_seconds": 1.0, "timeout_seconds": 5.0},
            "smtp": {"host": self.smtp.host, "port": self.smtp.port, "tls": "none", "timeout_seconds": 5.0},
        }

    async def send(self, i: int, public_url: str) -> None:
        raw = mm.plain_text_message(f"chaos {i}\n", from_=self.key(i), to=self.BOT, subject=f"chaos {i}")
        await self.imap.deliver(raw)

    def sends(self) -> int:
        return len(self.smtp.messages)

    def fail_next(self, status: int) -> None:
        raise NotImplementedError("the SMTP fake cannot fail a send on request")

    def delivered(self) -> Counter[str]:
        return Counter(rcpt.lower() for m in self.smtp.messages for rcpt in m.rcpt_tos)


class HttpDriver(Driver):
    """The OpenAI-compatible channel: the answer comes back in the HTTP response. A client
    whose request was cut off by a kill (or answered 503 while the gateway stops) sends it
    again with the same ``Idempotency-Key``; it must get the first request's answer, and the
    turn must run once. "Delivered" is counted where the answer arrives: at the client."""

    name = "http"
    faults = False
    API_KEY = "chaos-http-key-0123456789"

    def __init__(self) -> None:
        super().__init__()
        self.answers: Counter[str] = Counter()
        self.texts: dict[str, str] = {}

    def key(self, i: int) -> str:
        return f"chaos-{i:05d}"  # the conversation (header) and the idempotency key

    def config(self, public_url: str) -> dict[str, Any]:
        return {"api_keys": [self.API_KEY], "reply_timeout_seconds": 120.0}

    async def send(self, i: int, public_url: str) -> None:
        key = self.key(i)
        body = {"model": "assistant", "messages": [{"role": "user", "content": f"chaos {i}"}]}
        headers = {"Authorization": f"Bearer {self.API_KEY}", "Idempotency-Key": key,
                   "X-Soulgate-Conversation": key}
        timeout = aiohttp.ClientTimeout(total=180)

        async def post(attempt: int) -> int:
            async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
                f"{public_url}/v1/chat/completions", json=body, headers=headers
            ) as resp:
                if resp.status == 200:
                    answer = await resp.json()
                    self.texts[key] = answer["choices"][0]["message"]["content"]
                    self.answers[key] += 1
                return resp.status

        await self._until_accepted(post)

    def sends(self) -> int:
        return sum(self.answers.values())

    def fail_next(self, status: int) -> None:
        raise NotImplementedError("the client is the platform here")

    def delivered(self) -> Counter[str]:
        return Counter(self.answers)


def describe(drivers: list[Driver]) -> str:
    return json.dumps({d.name: {"deliveries": d.deliveries, "refused": d.refused} for d in drivers})
