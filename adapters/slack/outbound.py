"""Posting answers: render to mrkdwn chunks, ``chat.postMessage``, errors → delivery outcomes.

Why the SDK's retries are narrowed: slack-sdk's default
``AsyncConnectionErrorRetryHandler`` re-sends a request after
``ServerDisconnectedError`` / ``ClientOSError``, which happen *after* the
request left, when Slack may already have posted it: the same answer twice.
Our client retries only ``ClientConnectorError`` (the TCP connection was never
made, so nothing was sent). Every other failure goes to the delivery worker:
429 → :class:`RetryAfter`; a timeout or dropped connection →
:class:`OutcomeUnknown`, which the account's ``delivery_policy`` (default
``never_twice``) parks instead of posting again.

Why one session: without ``session=``, slack-sdk opens a new
``aiohttp.ClientSession`` (a new TCP and TLS handshake with slack.com) for
every call and closes it after. :class:`WebApi` keeps one session per account,
opened lazily on the running loop at the first call (a ``--role worker``
gateway sends without ever starting its adapters) and closed by
``SlackAdapter.close`` at gateway shutdown. The retry narrowing above still
holds: a request on a reused connection that the server closes under it fails
with ``ServerDisconnectedError`` → ``OutcomeUnknown``, never a silent re-post.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from gateway import (
    TYPING_SHOWN,
    OutcomeUnknown,
    PermanentDeliveryError,
    RateLimit,
    Reply,
    ReplyAddress,
    RetryAfter,
    SendResult,
    TransientDeliveryError,
    split_markdown,
)

from .config import SlackConfig
from .mrkdwn import escape, link, to_mrkdwn

__all__ = ["SlackOutbound", "WebApi", "classify_api_error", "make_client", "render_chunks"]

log = logging.getLogger("soulgate.adapters.slack")

#: ``ok: false`` errors worth trying again (Slack's own words: "a transient issue")
_TRANSIENT = frozenset({"service_unavailable", "team_added_to_org"})
#: errors after which "it's possible some aspect of the operation succeeded" (Slack docs)
_MAYBE_DONE = frozenset({"internal_error", "fatal_error"})
_REACTED_MEMORY = 2048


def make_client(cfg: SlackConfig) -> AsyncWebClient:
    """A Web API client whose only automatic retry cannot duplicate a post."""
    return AsyncWebClient(
        token=cfg.bot_token.get_secret_value(),
        base_url=cfg.api_base_url,
        timeout=int(max(1, cfg.timeout_seconds)),
        retry_handlers=[AsyncConnectionErrorRetryHandler(
            max_retry_count=1, error_types=[aiohttp.ClientConnectorError],
        )],
    )


class WebApi:
    """The account's Web API client and its one long-lived HTTP session.

    Call :meth:`client` (inside the event loop) for every request: it attaches
    the live session, opening it first if there is none yet, it was closed, or
    it belongs to another loop (an aiohttp session cannot cross loops).
    """

    def __init__(self, cfg: SlackConfig) -> None:
        self._client = make_client(cfg)
        self._timeout = aiohttp.ClientTimeout(total=max(1.0, cfg.timeout_seconds))
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sessions_opened = 0  # for status(): more than 1 means the session was reopened

    def client(self) -> AsyncWebClient:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or session.closed or self._loop is not loop:
            # slack-sdk passes no per-request timeout with a session of ours: the session's applies.
            session = aiohttp.ClientSession(timeout=self._timeout)
            self._session, self._loop = session, loop
            self.sessions_opened += 1
        self._client.session = session
        return self._client

    async def close(self) -> None:
        """Close the session (idempotent); a later call would open a new one."""
        session, loop = self._session, self._loop
        self._session = self._loop = None
        self._client.session = None
        if session is not None and not session.closed and loop is asyncio.get_running_loop():
            await session.close()


def render_chunks(reply: Reply, limit: int) -> list[Reply]:
    """Split the Markdown at paragraph/code boundaries, then render each piece to mrkdwn.

    We split before rendering (split_markdown keeps code fences balanced per
    chunk) and measure after: escaping (``&`` → ``&amp;``) can only grow the
    text, so a piece that grew past ``limit`` is split again, smaller.
    """
    pieces = _fit(reply.text, limit, limit)
    notes = [_attachment_note(a.name, a.ref) for a in reply.attachments]
    if notes:  # file upload is not implemented: name the files, link the ones with a URL
        tail = "\n".join(notes)
        if pieces and len(pieces[-1]) + 2 + len(tail) <= limit:
            pieces[-1] = f"{pieces[-1]}\n\n{tail}"
        else:
            pieces.append(tail[:limit])
    total = len(pieces)
    return [
        Reply(text=text, in_reply_to=reply.in_reply_to,
              meta={**reply.meta, "slack_part": i + 1, "slack_parts": total})
        for i, text in enumerate(pieces)
    ]


def _fit(markdown: str, limit: int, budget: int) -> list[str]:
    out: list[str] = []
    for piece in split_markdown(markdown, max(20, budget)):
        rendered = to_mrkdwn(piece)
        if len(rendered) <= limit:
            if rendered:
                out.append(rendered)
        elif budget <= 40:  # pathological (a wall of "&"): cut the rendered text itself
            out.extend(rendered[i:i + limit] for i in range(0, len(rendered), limit))
        else:
            out.extend(_fit(piece, limit, budget * 3 // 4))
    return out


def _attachment_note(name: str, ref: str | None) -> str:
    if ref and ref.startswith(("https://", "http://")):
        return f"📎 {link(ref, escape(name))}"
    return f"📎 {escape(name)}"


def classify_api_error(exc: SlackApiError) -> Exception:
    """The delivery outcome of a Web API error response."""
    status = exc.response.status_code
    error = str(exc.response.get("error") or f"HTTP {status}")
    if status == 429 or error == "ratelimited":
        raw = exc.response.headers.get("Retry-After") or exc.response.headers.get("retry-after")
        try:
            seconds = float(raw) if raw is not None else 1.0
        except ValueError:
            seconds = 1.0
        return RetryAfter(seconds, f"Slack rate limit: retry after {seconds:g}s")
    if error in _MAYBE_DONE or status in (502, 504):
        return OutcomeUnknown(f"Slack answered {error}: the post may or may not exist")
    if status >= 500 or error in _TRANSIENT:
        return TransientDeliveryError(f"Slack answered {error}")
    return PermanentDeliveryError(f"Slack refused the message: {error}")


class SlackOutbound:
    """Everything that writes to Slack for one account."""

    def __init__(self, cfg: SlackConfig, api: WebApi) -> None:
        self.cfg = cfg
        self.api = api
        # Messages this instance reacted to, so the reaction is added once (a bounded
        # memory, not a source of truth: the instance that sends the answer may be another
        # one, which learns of the reaction from the chunk's TYPING_SHOWN mark).
        self._reacted: OrderedDict[tuple[str, str], None] = OrderedDict()

    def rate_limits(self, address: ReplyAddress) -> list[RateLimit]:
        if self.cfg.post_interval_seconds <= 0:
            return []
        data = address.data
        key = f"slack:{data.get('team') or '-'}:{data.get('channel')}"
        return [RateLimit(key=key, interval=self.cfg.post_interval_seconds, burst=1)]

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        channel = address.data.get("channel")
        if not isinstance(channel, str) or not channel:
            raise PermanentDeliveryError("reply address has no Slack channel")
        if not reply.text.strip():
            raise PermanentDeliveryError("empty message")
        args: dict[str, Any] = {"channel": channel, "text": reply.text}
        thread_ts = address.data.get("thread_ts")
        if isinstance(thread_ts, str) and thread_ts:
            args["thread_ts"] = thread_ts
        try:
            response = await self.api.client().chat_postMessage(**args)
        except SlackApiError as exc:
            raise classify_api_error(exc) from exc
        except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
            raise TransientDeliveryError(f"cannot reach Slack: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise OutcomeUnknown(f"no answer from Slack ({type(exc).__name__}: {exc})") from exc
        if reply.meta.get(TYPING_SHOWN):  # the turn's last chunk, and the turn showed the reaction
            await self.unreact(address)
        return SendResult(
            platform_message_id=str(response.get("ts") or "") or None,
            extra={"channel": response.get("channel")},
        )

    async def react(self, address: ReplyAddress) -> None:
        """The "working on it" reaction on the user's message; best effort, once."""
        key = self._reaction_key(address)
        if key is None or key in self._reacted:
            return
        self._reacted[key] = None
        while len(self._reacted) > _REACTED_MEMORY:
            self._reacted.popitem(last=False)
        try:
            await self.api.client().reactions_add(channel=key[0], timestamp=key[1], name=self.cfg.ack_reaction)
        except SlackApiError as exc:
            if exc.response.get("error") != "already_reacted":
                log.debug("reactions.add failed: %s", exc.response.get("error"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("reactions.add failed: %s", exc)

    async def unreact(self, address: ReplyAddress) -> None:
        """Take the reaction back (the answer's last chunk is out, or there is no answer). Any
        instance may: the dispatch worker says when it was shown (``TYPING_SHOWN``)."""
        key = self._reaction_key(address)
        if key is None:
            return
        self._reacted.pop(key, None)
        if not self.cfg.remove_ack_reaction:
            return
        try:
            await self.api.client().reactions_remove(channel=key[0], timestamp=key[1], name=self.cfg.ack_reaction)
        except (SlackApiError, TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("reactions.remove failed: %s", exc)  # the answer is posted; that matters

    def _reaction_key(self, address: ReplyAddress) -> tuple[str, str] | None:
        channel, ts = address.data.get("channel"), address.data.get("ts")
        if not self.cfg.ack_reaction or not isinstance(channel, str) or not isinstance(ts, str):
            return None
        return channel, ts
