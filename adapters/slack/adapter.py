"""The Slack adapter: one instance per ``[channels.slack.<account>]`` table."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from contextlib import suppress
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError

from gateway import (
    Adapter,
    AdapterContext,
    AdmitResult,
    Attachment,
    RateLimit,
    Reply,
    ReplyAddress,
    SendResult,
)

from .config import SlackConfig
from .files import download_attachment
from .http import EventsEndpoint
from .inbound import CHANNEL, Identity, Ignored, parse_event
from .outbound import SlackOutbound, WebApi, render_chunks
from .socket import SocketModeRunner

__all__ = ["SlackAdapter"]

log = logging.getLogger("soulgate.adapters.slack")
_THREAD_MEMORY = 4096
#: how long a thread the bot was called into stays one it answers without a mention
#: (in adapter state; each mention renews it, at most daily; an older thread needs one again)
THREADS_KEPT_SECONDS = 90 * 86_400.0
_RENEW_AFTER = 86_400.0  # a mention rewrites the membership once it is this old
_RECHECK_AFTER = 3_600.0  # a membership read from Postgres is trusted this long, then read again
_now = time.time  # (tests move it)


class SlackAdapter(Adapter):
    channel = CHANNEL

    def __init__(self, account: str, config: SlackConfig) -> None:
        super().__init__(account)
        self.config = config
        self.delivery_policy = config.delivery_policy
        self.identity = Identity(bot_user_id=config.bot_user_id)
        self.auth_error: str | None = None
        # Also used without start(): a worker-only instance sends. Its HTTP session opens at the
        # first call (there is no event loop here: factories run in a thread) and closes in close().
        self.api = WebApi(config)
        self.outbound = SlackOutbound(config, self.api)
        self._ctx: AdapterContext | None = None
        self._socket: SocketModeRunner | None = None
        self._auth_task: asyncio.Task[None] | None = None
        # Threads known to include the bot, with when to stop trusting this memory (positive
        # answers only; Postgres has the truth, and an expiry this memory must not outlive).
        self._threads: OrderedDict[str, float] = OrderedDict()
        self.counts = {"admitted": 0, "duplicates": 0, "ignored": 0}

    # -- receiving --------------------------------------------------------------------

    async def start(self, ctx: AdapterContext) -> None:
        self._ctx = ctx
        if self.config.mode == "http":
            assert self.config.signing_secret is not None  # the config model insists
            endpoint = EventsEndpoint(self.config.signing_secret.get_secret_value(), self.receive, self.account)
            ctx.add_route("POST", self.config.events_path(self.account), endpoint.handle)
        else:
            assert self.config.app_token is not None
            self._socket = SocketModeRunner(
                self.config.app_token.get_secret_value(), self.config.api_base_url, self.receive, self.account,
            )
            await self._socket.start()
        # auth.test aside: until it answers, events name the bot in their authorizations.
        self._auth_task = asyncio.create_task(self._authenticate(ctx), name=f"slack-auth-{self.account}")

    async def stop(self) -> None:
        if self._auth_task is not None:
            self._auth_task.cancel()
            with suppress(BaseException):
                await self._auth_task
        if self._socket is not None:
            await self._socket.stop()
        # The Web API session stays open: the gateway drains in-flight sends after stop().

    async def close(self) -> None:
        await self.api.close()

    async def _authenticate(self, ctx: AdapterContext) -> None:
        try:
            answer = await self.api.client().auth_test()
        except SlackApiError as exc:
            self.auth_error = str(exc.response.get("error") or exc.response.status_code)
            ctx.log.error("Slack rejected the bot token of account %r: %s", self.account, self.auth_error)
            with suppress(Exception):
                await ctx.audit("slack_auth_failed", {"error": self.auth_error})
            return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            ctx.log.warning("auth.test failed (%s); the bot's identity comes from events until it works", exc)
            return
        self.auth_error = None
        self.identity.team_id = answer.get("team_id")
        self.identity.bot_user_id = self.config.bot_user_id or answer.get("user_id")
        self.identity.bot_id = answer.get("bot_id")
        ctx.log.info("Slack account %r is %s in team %s", self.account, answer.get("user"), answer.get("team"))

    async def receive(self, payload: dict[str, Any]) -> AdmitResult | None:
        """Admit one verified ``event_callback`` (HTTP or Socket Mode); None if ignored.

        Returns only after the inbox commit, so the caller may then acknowledge.
        Raises ValueError for a malformed event.
        """
        ctx = self._ctx
        if ctx is None:
            raise RuntimeError("Slack adapter is not started")
        parsed = parse_event(payload, self.account, self.config, self.identity)
        if isinstance(parsed, Ignored):
            self.counts["ignored"] += 1
            if parsed.audit:
                await ctx.audit("slack_ignored", {"reason": parsed.reason, **parsed.detail})
            return None
        env = parsed.envelope
        conversation = env.conversation.id
        if parsed.check_thread and parsed.thread_ts and await self._in_thread(ctx, parsed.team, conversation,
                                                                            parsed.thread_ts):
            env = env.evolve(addressed=True)
        if env.addressed and env.conversation.kind != "direct" and parsed.thread_ts:
            await self._join_thread(ctx, parsed.team, conversation, parsed.thread_ts)
        result = await ctx.admit(env)
        if not result.inbox_id:  # nothing to answer (no text, no files): the gateway dropped it
            self.counts["ignored"] += 1
        else:
            self.counts["admitted" if result.created else "duplicates"] += 1
        return result

    async def _in_thread(self, ctx: AdapterContext, team: str, channel: str, thread_ts: str) -> bool:
        key = f"thread:{team}:{channel}:{thread_ts}"
        if self._threads.get(key, 0.0) > _now():
            return True
        if await ctx.get_state(key):
            self._remember(key, _now() + _RECHECK_AFTER)
            return True
        self._threads.pop(key, None)
        return False

    async def _join_thread(self, ctx: AdapterContext, team: str, channel: str, thread_ts: str) -> None:
        # The bot is called into this thread: later replies in it need no mention. A mention
        # in a thread it is in renews the membership once a day (not on every message).
        key = f"thread:{team}:{channel}:{thread_ts}"
        now = _now()
        if self._threads.get(key, 0.0) < now + THREADS_KEPT_SECONDS - _RENEW_AFTER:
            await ctx.set_state(key, True, expires_in=THREADS_KEPT_SECONDS)
            self._remember(key, now + THREADS_KEPT_SECONDS)

    def _remember(self, key: str, until: float) -> None:
        self._threads[key] = until
        self._threads.move_to_end(key)
        while len(self._threads) > _THREAD_MEMORY:
            self._threads.popitem(last=False)

    # -- sending ----------------------------------------------------------------------

    def render(self, reply: Reply) -> list[Reply]:
        return render_chunks(reply, self.config.max_message_chars)

    def rate_limits(self, address: ReplyAddress) -> list[RateLimit]:
        return self.outbound.rate_limits(address)

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        return await self.outbound.send(address, reply)

    async def typing(self, address: ReplyAddress) -> None:
        await self.outbound.react(address)

    async def clear_typing(self, address: ReplyAddress) -> None:
        await self.outbound.unreact(address)

    async def fetch_attachment(self, attachment: Attachment, *, max_bytes: int | None = None) -> bytes:
        return await download_attachment(self.config, attachment, max_bytes)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.config.mode,
            "team_id": self.identity.team_id,
            "bot_user_id": self.identity.bot_user_id,
            "delivery_policy": self.delivery_policy,
            **self.counts,
        }
        if self.auth_error:
            out["auth_error"] = self.auth_error
        if self.config.mode == "http":
            out["path"] = self.config.events_path(self.account)
        elif self._socket is not None:
            out["connected"] = self._socket.connected
        return out
