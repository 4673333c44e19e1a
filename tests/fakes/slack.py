"""A fake Slack (Web API + Socket Mode) on 127.0.0.1 for tests.

slack-sdk's real ``AsyncWebClient(token=..., base_url=fake.base_url)`` and
``slack_sdk.socket_mode.aiohttp.SocketModeClient`` talk to it over real HTTP and
WebSocket, so tests exercise the SDK's own encoding, retry handlers and errors.

Wire facts this mirrors (read from slack-sdk 3.47):
- The SDK POSTs ``<base_url><method>``; ``base_url`` must end with "/".  Methods
  built with ``params=`` (auth.test, reactions.*, apps.connections.open) send
  their arguments in the *query string* of a POST; chat.* send a JSON body;
  conversations.info / users.info are GETs.  We therefore merge query, form and
  JSON into one argument dict.
- The token travels as ``Authorization: Bearer``; errors are HTTP 200 with
  ``{"ok": false, "error": ...}`` except rate limits (429 + ``Retry-After``).
"""

# The wait helpers take ``timeout=`` on purpose (ASYNC109 prefers asyncio.timeout):
# a deadline on every wait keeps a broken test from hanging the suite.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp
import pytest_asyncio
from aiohttp import web
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

JSON = dict[str, Any]
T = TypeVar("T")
SLACK_TRUNCATE_AT = 40_000  # Slack silently cuts longer text; it does not fail.
DEFAULT_SIGNING_SECRET = "soulgate-test-signing-secret"
ChannelKind = Literal["channel", "private", "im", "mpim"]

_last_us = 0


def new_ts() -> str:
    """A Slack-style "seconds.micros" ts, strictly increasing across the process.

    Posts and inbound events share this clock, so a bot reply is always "later"
    than the message it answers, like on real Slack.
    """
    global _last_us
    _last_us = max(time.time_ns() // 1000, _last_us + 1)
    return f"{_last_us // 1_000_000}.{_last_us % 1_000_000:06d}"


@dataclass(frozen=True)
class Workspace:
    """One installation: what auth.test answers for its bot token."""

    token: str = "xoxb-soulgate-test"
    team_id: str = "T0SOULGATE"
    team: str = "Soulgate Test"
    user_id: str = "U0BOT"  # the bot *user*; what <@...> mentions and IgnoringSelfEvents use
    user: str = "soulbot"
    bot_id: str = "B0BOT"
    app_id: str = "A0SOULGATE"
    enterprise_id: str | None = None


@dataclass
class ApiCall:
    method: str
    token: str | None
    args: JSON
    status: int  # 0 = connection dropped before any answer
    error: str | None = None
    at: float = field(default_factory=time.monotonic)
    peer: tuple[str, int] | None = None  # the client's (host, port): one per TCP connection


@dataclass
class Post:
    channel: str
    text: str
    ts: str
    team_id: str
    thread_ts: str | None
    blocks: list[Any] | None
    mrkdwn: bool | None
    args: JSON  # everything the SDK sent, for assertions on less common fields
    edits: list[str] = field(default_factory=list)  # earlier texts, from chat.update


@dataclass
class Envelope:
    envelope_id: str
    payload: JSON
    type: str = "events_api"
    retry_attempt: int = 0
    retry_reason: str = ""
    accepts_response_payload: bool = False
    ack: JSON | None = None  # the client's {"envelope_id": ..., "payload"?: ...}

    def wire(self) -> JSON:  # what goes over the socket: everything but our ack record
        return {k: v for k, v in asdict(self).items() if k != "ack"}


@dataclass
class _Fault:
    kind: Literal["ratelimited", "server_error", "drop", "drop_after", "delay", "error"]
    retry_after: int = 1
    status: int = 500
    error: str = ""
    delay: float = 0.0


class _SlackError(Exception):
    def __init__(self, error: str, status: int = 200, headers: Mapping[str, str] | None = None):
        super().__init__(error)
        self.error, self.status, self.headers = error, status, dict(headers or {})


def _flag(value: Any) -> bool | None:
    # JSON bodies carry real booleans; query/form ones carry "1"/"0"/"true".
    if value is None or isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true")


class FakeSlack:
    """Fake Slack server.  Use ``start_fake_slack()`` or the ``fake_slack`` fixture."""

    def __init__(
        self,
        workspaces: Sequence[Workspace] | None = None,
        *,
        app_tokens: Mapping[str, str] | None = None,
        signing_secret: str = DEFAULT_SIGNING_SECRET,
        channel_post_interval: float | None = None,
        msg_too_long_over: int | None = None,
    ) -> None:
        self.workspaces = list(workspaces or [Workspace()])
        self._by_token = {w.token: w for w in self.workspaces}
        # app-level (xapp-) token -> app_id; only these may call apps.connections.open.
        first = self.workspaces[0]
        self.app_tokens = dict(app_tokens or {f"xapp-1-{first.app_id}-test": first.app_id})
        self.signing_secret = signing_secret
        # None = no limit; 1.0 mimics chat.postMessage's ~1 msg/s per channel.
        self.channel_post_interval = channel_post_interval
        # None = accept up to Slack's 40k; e.g. 4000 makes longer text fail msg_too_long.
        self.msg_too_long_over = msg_too_long_over

        self.calls: list[ApiCall] = []
        self.posts: list[Post] = []
        self.reaction_log: list[tuple[str, str, str, str]] = []  # (op, channel, ts, name)
        self.reactions: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.channel_429s: Counter[str] = Counter()  # 429s from the per-channel limit
        self.channels: dict[str, JSON] = {}
        self.users: dict[str, JSON] = {}
        self.envelopes: dict[str, Envelope] = {}
        self.socket_messages: list[Any] = []  # every frame a Socket Mode client sent
        self.socket_connections = 0  # how many WebSockets were ever opened
        self._faults: dict[str, deque[_Fault]] = defaultdict(deque)
        self._last_post: dict[tuple[str, str], float] = {}
        self._tickets: dict[str, str] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ----------------------------------------------------------------- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def workspace(self) -> Workspace:
        return self.workspaces[0]

    @property
    def app_token(self) -> str:
        return next(iter(self.app_tokens))

    async def start(self) -> None:
        app = web.Application()
        # "/{method}" too: CHANNELS.md documents base_url without the /api/ part.
        for prefix in ("/api/", "/"):
            app.router.add_route("*", prefix + "{method:[a-zA-Z]+\\.[a-zA-Z.]+}", self._api)
        app.router.add_get("/link/", self._socket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        # Bind ourselves so we learn the random port without private aiohttp attributes.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, shutdown_timeout=1.0).start()

    async def stop(self) -> None:
        await self.close_sockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def client(self, workspace: Workspace | None = None, **kwargs: Any) -> AsyncWebClient:
        token = (workspace or self.workspace).token
        return AsyncWebClient(token=token, base_url=self.base_url, **kwargs)

    def socket_mode_client(self, **kwargs: Any) -> SocketModeClient:
        # The SDK's default web_client points at slack.com: always hand it ours.
        web_client = AsyncWebClient(base_url=self.base_url)
        return SocketModeClient(app_token=self.app_token, web_client=web_client, **kwargs)

    # ------------------------------------------------------------------ fixtures
    def add_channel(
        self, channel_id: str, kind: ChannelKind = "channel", name: str | None = None,
        user: str | None = None,
    ) -> JSON:
        info: JSON = {
            "id": channel_id, "name": name or channel_id.lower(), "created": 1_700_000_000,
            # is_group is only true for pre-2021 private channels: adapters must not use it.
            "is_channel": kind in ("channel", "private"), "is_group": False,
            "is_im": kind == "im", "is_mpim": kind == "mpim", "is_private": kind != "channel",
            "is_archived": False, "is_member": True,
        }
        if kind == "im":
            info["user"] = user or "U0ALICE"
        self.channels[channel_id] = info
        return info

    def add_user(self, user_id: str, name: str | None = None, **extra: Any) -> JSON:
        name = name or user_id.lower()
        info: JSON = {
            "id": user_id, "team_id": self.workspace.team_id, "name": name,
            "real_name": name.title(), "is_bot": False, "deleted": False, "tz": "UTC",
            "profile": {"real_name": name.title(), "display_name": name},
        }
        self.users[user_id] = {**info, **extra}
        return self.users[user_id]

    # ----------------------------------------------------------- fault injection
    def ratelimit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer 429 + ``Retry-After``."""
        self._faults[method].extend(_Fault("ratelimited", retry_after=retry_after)
                                    for _ in range(times))

    def server_error(self, method: str, times: int = 1, status: int = 500) -> None:
        self._faults[method].extend(_Fault("server_error", status=status) for _ in range(times))

    def drop_connection(self, method: str, times: int = 1, after_processing: bool = True) -> None:
        """Close the TCP connection instead of answering.

        ``after_processing=True`` applies the call first (a post *is* recorded), the
        case where a client retry produces a duplicate message.
        """
        kind: Literal["drop", "drop_after"] = "drop_after" if after_processing else "drop"
        self._faults[method].extend(_Fault(kind) for _ in range(times))

    def delay(self, method: str, seconds: float, times: int = 1) -> None:
        self._faults[method].extend(_Fault("delay", delay=seconds) for _ in range(times))

    def fail(self, method: str, error: str, times: int = 1) -> None:
        """Answer ``{"ok": false, "error": error}`` (HTTP 200), e.g. channel_not_found."""
        self._faults[method].extend(_Fault("error", error=error) for _ in range(times))

    # ---------------------------------------------------------------- assertions
    def calls_to(self, method: str) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method]

    def count(self, method: str, status: int | None = None) -> int:
        return sum(1 for c in self.calls_to(method) if status is None or c.status == status)

    def connections(self, method: str | None = None) -> int:
        """How many distinct TCP connections carried the calls (to ``method``, if given)."""
        return len({c.peer for c in self.calls if method is None or c.method == method})

    def posts_in(self, channel: str, thread_ts: str | None = None) -> list[Post]:
        return [p for p in self.posts
                if p.channel == channel and (thread_ts is None or p.thread_ts == thread_ts)]

    async def _wait(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        found: list[T] = []

        def check() -> bool:
            value = probe()
            if value is not None:
                found.append(value)
            return value is not None

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(check), timeout)
            except TimeoutError:
                raise TimeoutError(f"fake Slack: no {what} within {timeout}s") from None
        return found[-1]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_posts(self, channel: str, count: int = 1, timeout: float = 5.0,
                             thread_ts: str | None = None) -> list[Post]:
        """Wait until ``channel`` holds at least ``count`` posts; return them all."""
        def probe() -> list[Post] | None:
            posts = self.posts_in(channel, thread_ts)
            return posts if len(posts) >= count else None
        return await self._wait(probe, timeout, f"{count} post(s) in {channel}")

    async def wait_for_reactions(self, count: int = 1, timeout: float = 5.0) -> list[tuple[str, str, str, str]]:
        """Wait until ``reaction_log`` holds at least ``count`` adds and removes; return it."""
        def probe() -> list[tuple[str, str, str, str]] | None:
            return list(self.reaction_log) if len(self.reaction_log) >= count else None
        return await self._wait(probe, timeout, f"{count} reaction change(s)")

    # ------------------------------------------------------------------ Web API
    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        args: JSON = dict(request.query)
        if request.content_type == "application/json":
            body = await request.read()
            args.update(json.loads(body) if body else {})
        else:  # form-urlencoded or multipart; empty for the SDK's params= POSTs
            args.update(await request.post())
        for key in ("blocks", "attachments", "metadata"):
            if isinstance(args.get(key), str):  # form bodies carry these JSON-encoded
                args[key] = json.loads(args[key])
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else args.pop("token", None)
        call = ApiCall(method, token, args, 200)
        if request.transport is not None:
            peer = request.transport.get_extra_info("peername")
            call.peer = (peer[0], peer[1]) if peer else None
        self.calls.append(call)

        fault = self._faults[method].popleft() if self._faults[method] else None
        try:
            if fault is not None and fault.kind == "delay":
                await asyncio.sleep(fault.delay)
            elif fault is not None and fault.kind == "ratelimited":
                raise _SlackError("ratelimited", 429, {"Retry-After": str(fault.retry_after)})
            elif fault is not None and fault.kind == "error":
                raise _SlackError(fault.error)
            elif fault is not None and fault.kind == "server_error":
                # A non-JSON 5xx (as a proxy or load balancer sends) is the harder
                # case: SlackApiError then has no ``error``, so callers need .get().
                call.status, call.error = fault.status, "server_error"
                return web.Response(status=fault.status, text="<html>Internal Server Error"
                                    "</html>", content_type="text/html")
            elif fault is not None and fault.kind == "drop":
                return self._drop(request, call)
            result = {"ok": True, **self._dispatch(method, token, args)}
        except _SlackError as e:
            call.status, call.error = e.status, e.error
            await self._notify()
            return web.json_response({"ok": False, "error": e.error}, status=e.status,
                                     headers=e.headers)
        await self._notify()
        if fault is not None and fault.kind == "drop_after":
            return self._drop(request, call)
        return web.json_response(result)

    def _drop(self, request: web.Request, call: ApiCall) -> web.StreamResponse:
        # Closing the transport makes aiohttp clients raise ServerDisconnectedError,
        # which slack-sdk's default AsyncConnectionErrorRetryHandler retries once.
        call.status, call.error = 0, "connection_dropped"
        if request.transport is not None:
            request.transport.close()
        raise web.HTTPInternalServerError()  # never reaches the client

    def _dispatch(self, method: str, token: str | None, args: JSON) -> JSON:
        if token is None:
            raise _SlackError("not_authed")
        if method == "apps.connections.open":
            if token not in self.app_tokens:
                raise _SlackError("not_allowed_token_type" if token in self._by_token
                                  else "invalid_auth")
            ticket = uuid.uuid4().hex
            self._tickets[ticket] = self.app_tokens[token]
            return {"url": f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}"}
        ws = self._by_token.get(token)
        if ws is None:
            raise _SlackError("not_allowed_token_type" if token in self.app_tokens
                              else "invalid_auth")
        handler = {
            "auth.test": self._auth_test, "chat.postMessage": self._post_message,
            "chat.update": self._update, "reactions.add": self._reaction,
            "reactions.remove": self._reaction, "conversations.info": self._conversation,
            "users.info": self._user,
        }.get(method)
        if handler is None:
            raise _SlackError("unknown_method")
        return handler(ws, method, args)

    def _auth_test(self, ws: Workspace, method: str, args: JSON) -> JSON:
        return {"url": f"https://{ws.team.lower().replace(' ', '-')}.slack.com/",
                "team": ws.team, "user": ws.user, "team_id": ws.team_id, "user_id": ws.user_id,
                "bot_id": ws.bot_id, "enterprise_id": ws.enterprise_id,
                "is_enterprise_install": False}

    def _post_message(self, ws: Workspace, method: str, args: JSON) -> JSON:
        channel = args.get("channel")
        if not channel:
            raise _SlackError("channel_not_found")
        text = str(args.get("text") or "")
        if not text and not args.get("blocks") and not args.get("attachments"):
            raise _SlackError("no_text")
        if self.msg_too_long_over is not None and len(text) > self.msg_too_long_over:
            raise _SlackError("msg_too_long")
        if self.channel_post_interval is not None:
            # Strict form of "1 message per second per channel" (real Slack allows
            # short bursts); the rejected post is not recorded, only counted.
            now, key = time.monotonic(), (ws.team_id, channel)
            wait = self._last_post.get(key, -1e9) + self.channel_post_interval - now
            if wait > 0:
                self.channel_429s[channel] += 1
                raise _SlackError("ratelimited", 429, {"Retry-After": str(max(1, round(wait)))})
            self._last_post[key] = now
        post = Post(channel, text[:SLACK_TRUNCATE_AT], new_ts(), ws.team_id,
                    args.get("thread_ts"), args.get("blocks"), _flag(args.get("mrkdwn")), args)
        self.posts.append(post)
        message: JSON = {"type": "message", "text": post.text, "user": ws.user_id,
                         "bot_id": ws.bot_id, "ts": post.ts, "team": ws.team_id}
        if post.thread_ts:
            message["thread_ts"] = post.thread_ts
        if post.blocks is not None:
            message["blocks"] = post.blocks
        return {"channel": channel, "ts": post.ts, "message": message}

    def _update(self, ws: Workspace, method: str, args: JSON) -> JSON:
        channel, ts = args.get("channel"), args.get("ts")
        post = next((p for p in self.posts if p.channel == channel and p.ts == ts), None)
        if post is None:
            raise _SlackError("message_not_found")
        post.edits.append(post.text)
        post.text = str(args.get("text") or "")[:SLACK_TRUNCATE_AT]
        if "blocks" in args:
            post.blocks = args["blocks"]
        return {"channel": channel, "ts": ts, "text": post.text}

    def _reaction(self, ws: Workspace, method: str, args: JSON) -> JSON:
        channel, ts, name = args.get("channel"), args.get("timestamp"), args.get("name")
        if not (channel and ts and name):
            raise _SlackError("invalid_arguments")
        current = self.reactions[(channel, ts)]
        if method == "reactions.add":
            if name in current:
                raise _SlackError("already_reacted")
            current.add(name)
        else:
            if name not in current:
                raise _SlackError("no_reaction")
            current.discard(name)
        self.reaction_log.append((method.split(".")[1], channel, ts, name))
        return {}

    def _conversation(self, ws: Workspace, method: str, args: JSON) -> JSON:
        channel = str(args.get("channel") or "")
        if channel not in self.channels:
            # Unregistered ids get a type from their prefix, as Slack ids suggest.
            kinds: dict[str, ChannelKind] = {"C": "channel", "D": "im", "G": "mpim"}
            if channel[:1] not in kinds:
                raise _SlackError("channel_not_found")
            self.add_channel(channel, kinds[channel[:1]])
        return {"channel": self.channels[channel]}

    def _user(self, ws: Workspace, method: str, args: JSON) -> JSON:
        user = str(args.get("user") or "")
        bots = {w.user_id: w for w in self.workspaces}
        if user in bots:
            return {"user": {"id": user, "team_id": bots[user].team_id, "name": bots[user].user,
                             "is_bot": True, "deleted": False,
                             "profile": {"bot_id": bots[user].bot_id}}}
        if user not in self.users:
            if user[:1] not in ("U", "W"):
                raise _SlackError("user_not_found")
            self.add_user(user)
        return {"user": self.users[user]}

    # --------------------------------------------------------------- Socket Mode
    async def _socket(self, request: web.Request) -> web.StreamResponse:
        app_id = self._tickets.pop(request.query.get("ticket", ""), None)
        if app_id is None:  # tickets from apps.connections.open are single-use
            return web.Response(status=401, text="invalid ticket")
        # autoping answers the SDK's "sdk-ping-pong:<t>" pings, which it uses to
        # decide whether the connection is stale.
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self.socket_connections += 1
        await ws.send_json({"type": "hello", "num_connections": len(self._sockets),
                            "connection_info": {"app_id": app_id},
                            "debug_info": {"host": "fake-slack",
                                           "approximate_connection_time": 3600}})
        await self._notify()
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                self.socket_messages.append(data)
                envelope = self.envelopes.get(data.get("envelope_id", ""))
                if envelope is not None and envelope.ack is None:
                    envelope.ack = data
                await self._notify()
        finally:
            self._sockets.remove(ws)
            await self._notify()
        return ws

    async def wait_for_socket(self, timeout: float = 5.0, *,
                              opened: int = 1) -> web.WebSocketResponse:
        """Newest live connection, once at least ``opened`` were ever opened (reconnects)."""
        def probe() -> web.WebSocketResponse | None:
            ready = self._sockets and self.socket_connections >= opened
            return self._sockets[-1] if ready else None
        return await self._wait(probe, timeout, f"Socket Mode connection #{opened}")

    async def push_envelope(self, payload: JSON, *, type: str = "events_api",
                            retry_attempt: int = 0, retry_reason: str = "",
                            accepts_response_payload: bool = False,
                            timeout: float = 5.0) -> Envelope:
        """Send an envelope to the newest connection (waiting for one to exist).

        Real Slack spreads envelopes randomly over an app's connections; tests
        want determinism, so the newest connection wins.
        """
        ws = await self.wait_for_socket(timeout)
        envelope = Envelope(str(uuid.uuid4()), payload, type, retry_attempt, retry_reason,
                            accepts_response_payload)
        self.envelopes[envelope.envelope_id] = envelope
        await ws.send_json(envelope.wire())
        return envelope

    async def wait_for_ack(self, envelope: Envelope | str, timeout: float = 5.0) -> JSON:
        env = self.envelopes[envelope if isinstance(envelope, str) else envelope.envelope_id]
        return await self._wait(lambda: env.ack, timeout, f"ack for {env.envelope_id}")

    async def redeliver(self, envelope: Envelope | str, retry_reason: str = "timeout",
                        timeout: float = 5.0) -> Envelope:
        """Resend an envelope's payload as Slack's retry: same event_id, retry_attempt + 1.

        A new envelope_id is used; consumers must dedupe on the payload's event_id.
        """
        old = self.envelopes[envelope if isinstance(envelope, str) else envelope.envelope_id]
        return await self.push_envelope(old.payload, type=old.type,
                                        retry_attempt=old.retry_attempt + 1,
                                        retry_reason=retry_reason,
                                        accepts_response_payload=old.accepts_response_payload,
                                        timeout=timeout)

    async def request_reconnect(self, reason: str = "refresh_requested") -> None:
        """Send Slack's ``disconnect`` message; the SDK reconnects via apps.connections.open."""
        for ws in list(self._sockets):
            await ws.send_json({"type": "disconnect", "reason": reason})

    async def close_sockets(self) -> None:
        for ws in list(self._sockets):
            await ws.close()


# ------------------------------------------------------------------ inbound events
def message_event(text: str = "hello", *, channel: str = "C0GENERAL", user: str = "U0ALICE",
                  ts: str | None = None, thread_ts: str | None = None,
                  channel_type: str | None = None, subtype: str | None = None,
                  bot_id: str | None = None, files: list[JSON] | None = None,
                  team: str = Workspace.team_id, **extra: Any) -> JSON:
    """A ``message`` event; channel_type follows the id prefix (D=im, G=mpim)."""
    ts = ts or new_ts()
    event: JSON = {"type": "message", "channel": channel, "user": user, "text": text,
                   "ts": ts, "event_ts": ts, "team": team, "client_msg_id": str(uuid.uuid4()),
                   "channel_type": channel_type or {"D": "im", "G": "mpim"}.get(channel[:1],
                                                                                "channel")}
    if thread_ts:
        event["thread_ts"] = thread_ts
    if files:  # Slack marks user uploads as subtype file_share
        event["files"], event["subtype"] = files, subtype or "file_share"
    if subtype:
        event["subtype"] = subtype
    if bot_id:
        event["bot_id"] = bot_id
        event.pop("client_msg_id")  # only human clients send one
    return {**event, **extra}


def app_mention_event(text: str = f"<@{Workspace.user_id}> hello", *,
                      channel: str = "C0GENERAL", user: str = "U0ALICE", ts: str | None = None,
                      thread_ts: str | None = None, team: str = Workspace.team_id,
                      **extra: Any) -> JSON:
    ts = ts or new_ts()
    event: JSON = {"type": "app_mention", "channel": channel, "user": user, "text": text,
                   "ts": ts, "event_ts": ts, "team": team}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {**event, **extra}


def event_callback(event: JSON, *, workspace: Workspace | None = None,
                   event_id: str | None = None, event_time: int | None = None) -> JSON:
    """Wrap an event as the Events API delivers it (HTTP body or Socket Mode payload)."""
    ws = workspace or Workspace()
    return {
        "token": "legacy-verification-token", "team_id": ws.team_id, "api_app_id": ws.app_id,
        "event": event, "type": "event_callback",
        "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
        "event_time": event_time or int(time.time()),
        "authorizations": [{"enterprise_id": ws.enterprise_id, "team_id": ws.team_id,
                            "user_id": ws.user_id, "is_bot": True,
                            "is_enterprise_install": False}],
        "is_ext_shared_channel": False,
    }


def url_verification(challenge: str | None = None) -> JSON:
    return {"token": "legacy-verification-token", "type": "url_verification",
            "challenge": challenge or uuid.uuid4().hex}


def signed_headers(body: bytes | str, signing_secret: str = DEFAULT_SIGNING_SECRET, *,
                   timestamp: str | None = None, stale: bool = False, forged: bool = False,
                   bad_timestamp: bool = False,
                   omit: Literal["timestamp", "signature", "both"] | None = None,
                   retry_num: int | None = None, retry_reason: str = "http_timeout",
                   content_type: str = "application/json") -> dict[str, str]:
    """Headers Slack would send with ``body``, optionally broken in one way.

    stale: correctly signed but 10 minutes old (outside the 5-minute window).
    forged: well-formed ``v0=`` signature made with the wrong secret.
    bad_timestamp: non-numeric timestamp (SignatureVerifier.is_valid raises ValueError).
    """
    if bad_timestamp:
        timestamp = "not-a-number"
    elif timestamp is None:
        timestamp = str(int(time.time()) - (600 if stale else 0))
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=timestamp,
                                                                     body=body)
    if forged:
        signature = SignatureVerifier("not-the-secret").generate_signature(timestamp=timestamp,
                                                                           body=body)
    headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
               "X-Slack-Signature": signature or ""}
    if omit in ("timestamp", "both"):
        del headers["X-Slack-Request-Timestamp"]
    if omit in ("signature", "both"):
        del headers["X-Slack-Signature"]
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    return headers


@dataclass
class SignedPostResult:
    status: int
    text: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


async def post_signed(url: str, payload: JSON | str | bytes,
                      signing_secret: str = DEFAULT_SIGNING_SECRET, *,
                      timeout: float = 10.0, **sign_options: Any) -> SignedPostResult:
    """POST ``payload`` to ``url`` exactly as Slack would (signed raw bytes)."""
    body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    body = body.encode() if isinstance(body, str) else body
    headers = signed_headers(body, signing_secret, **sign_options)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(url, data=body, headers=headers) as resp:
            return SignedPostResult(resp.status, await resp.text(), dict(resp.headers))


# ----------------------------------------------------------------- entry points
@asynccontextmanager
async def start_fake_slack(workspaces: Sequence[Workspace] | None = None,
                           **options: Any) -> AsyncIterator[FakeSlack]:
    """Run a FakeSlack for the ``async with`` block; options go to ``FakeSlack``."""
    fake = FakeSlack(workspaces, **options)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A fresh FakeSlack per test.  Import it into a test module to use it."""
    async with start_fake_slack() as fake:
        yield fake
