"""The OpenAI-compatible endpoints on the public listener, shared by every http account.

One frontend per gateway (kept with ``Services.provide``): it owns the routes,
picks the account by the request's API key, and holds the one
:class:`~adapters.http.waiter.ReplyWaiter` all pending requests share. A
request is admitted to the inbox like any platform message and answered when
its turn is committed and its chunks are delivered, which may happen in
another instance: the handler waits on the database, never on an in-process
callback.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import AdapterContext, ConfigError, Services

from .protocol import (
    ApiError,
    ChatRequest,
    check_name,
    completion,
    completion_chunk,
    model_object,
    parse_chat_request,
    usage_object,
)
from .waiter import Answer, ReplyWaiter, WaiterStopped

if TYPE_CHECKING:
    from .adapter import HttpAdapter

__all__ = ["CONVERSATION_HEADER", "IDEMPOTENCY_HEADER", "INBOX_HEADER", "HttpFrontend"]

log = logging.getLogger("soulgate.adapters.http")

CONVERSATION_HEADER = "X-Soulgate-Conversation"
INBOX_HEADER = "X-Soulgate-Inbox-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_PROVIDED = "channel:http"
#: SSE comment sent while a streamed answer is being prepared, so proxies keep the connection
KEEPALIVE_SECONDS = 15.0
#: how often a waiting handler checks whether its client is still there
_SLICE = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ClientGone(Exception):
    pass


def key_digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of the key's length.
    return hashlib.sha256(key.encode()).digest()


def _api(handler: Handler) -> Handler:
    """Answer :class:`ApiError` in OpenAI's error shape."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
    return wrapped


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class HttpFrontend:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.accounts: dict[str, HttpAdapter] = {}
        self._keys: list[tuple[bytes, str]] = []
        self.waiter = ReplyWaiter(services.store.replies)
        self.created = int(time.time())
        self._waiting = False

    @classmethod
    def attach(cls, ctx: AdapterContext) -> HttpFrontend:
        """This gateway's frontend; the first http account to start creates it and mounts the routes."""
        found = ctx.services.provided(_PROVIDED)
        if isinstance(found, HttpFrontend):
            return found
        frontend = cls(ctx.services)
        ctx.services.provide(_PROVIDED, frontend)
        ctx.add_route("POST", "/v1/chat/completions", _api(frontend.chat))
        ctx.add_route("GET", "/v1/models", _api(frontend.list_models))
        ctx.add_route("GET", "/v1/models/{model}", _api(frontend.get_model))
        ctx.add_route("GET", "/v1/soulgate/replies/{inbox_id}", _api(frontend.get_reply))
        return frontend

    def register(self, adapter: HttpAdapter) -> None:
        for digest in adapter.key_digests:
            for known, account in self._keys:
                if hmac.compare_digest(digest, known) and account != adapter.account:
                    raise ConfigError(f"channels.http.{adapter.account}: one of its api_keys is also a key of "
                                      f"account {account!r}; a key must pick exactly one account")
        self.accounts[adapter.account] = adapter
        self._keys.extend((d, adapter.account) for d in adapter.key_digests)
        if not self._waiting:
            self.waiter.start()
            self._waiting = True

    async def unregister(self, adapter: HttpAdapter) -> None:
        self.accounts.pop(adapter.account, None)
        self._keys = [(d, a) for d, a in self._keys if a != adapter.account]
        if not self.accounts and self._waiting:
            self._waiting = False
            await self.waiter.stop()  # requests still waiting get 503; their turns go on

    # -- what every endpoint checks --------------------------------------------------------

    def _authenticate(self, request: web.Request) -> HttpAdapter:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        digest = key_digest(token.strip())
        match: str | None = None
        for known, account in self._keys:  # no early exit: every request costs the same
            if hmac.compare_digest(digest, known) and match is None:
                match = account
        adapter = self.accounts.get(match) if match is not None else None
        if adapter is None:
            log.info("http: refused a request with an unknown API key from %s", request.remote)
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return adapter

    def agents(self, adapter: HttpAdapter, *, limited: bool = True) -> dict[str, str]:
        """The agents (name → description) this account may call: the loaded SOUL agents,
        or the configured default agent when no plugin provides them."""
        provider = self.services.provided("agents")
        describe = getattr(provider, "describe", None)
        found: dict[str, str] = {}
        if callable(describe):
            for item in describe():
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    found[item["name"]] = str(item.get("description") or "")
        if not found:
            found = {self.services.config.agents.default: ""}
        allowed = adapter.config.agents if limited else []
        return {n: d for n, d in found.items() if n in allowed} if allowed else found

    # -- /v1/models ---------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        adapter = self._authenticate(request)
        data = [model_object(n, d, self.created) for n, d in sorted(self.agents(adapter).items())]
        return web.json_response({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        adapter = self._authenticate(request)
        name = request.match_info["model"]
        agents = self.agents(adapter)
        if name not in agents:
            raise _no_model(name)
        return web.json_response(model_object(name, agents[name], self.created))

    # -- /v1/chat/completions -----------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        adapter = self._authenticate(request)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.services.config.http.max_body_bytes
            raise ApiError(413, f"The request body is larger than {limit} bytes (http.max_body_bytes).",
                           code="request_too_large") from None
        req = parse_chat_request(raw)
        if req.model not in self.agents(adapter):
            raise _no_model(req.model)
        header = request.headers.get(CONVERSATION_HEADER)
        conversation = check_name(header, CONVERSATION_HEADER) if header is not None else req.user
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None:
            check_name(key, IDEMPOTENCY_HEADER)
        env = adapter.envelope(req, conversation, key)
        try:
            if req.earlier:
                # Before admitting, so the turn finds them. Should the admit then fail, the
                # rows only start a conversation the client's retry would start the same way.
                await self.services.store.replies.seed_history(
                    env.conversation_key, env.id, [(r, t, {"source": "request"}) for r, t in req.earlier])
            admitted = await adapter.admit(env)
        except Exception as exc:
            log.warning("http: could not admit a request: %s: %s", type(exc).__name__, exc)
            raise ApiError(503, "The gateway could not store the request; nothing was started. Try again.",
                           type="server_error", code="unavailable", headers={"x-should-retry": "true"}) from None
        inbox_id = admitted.inbox_id
        headers = {INBOX_HEADER: inbox_id, CONVERSATION_HEADER: env.conversation.id}
        fut = self.waiter.expect(inbox_id)
        try:
            if req.stream:
                return await self._stream(request, req, adapter, fut, headers, retry_safe=key is not None)
            return await self._answer(request, req, adapter, fut, headers, retry_safe=key is not None)
        finally:
            self.waiter.forget(inbox_id, fut)

    async def _wait(self, request: web.Request, fut: asyncio.Future[Answer], deadline: float,
                    keepalive: Callable[[], Awaitable[Any]] | None = None) -> Answer | None:
        """The answer; None at the deadline. Raises ``_ClientGone`` or ``WaiterStopped``."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not fut.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await asyncio.wait({fut}, timeout=min(remaining, _SLICE))
            if fut.done():
                break
            if _gone(request):
                raise _ClientGone
            if keepalive is not None and loop.time() - last >= KEEPALIVE_SECONDS:
                await keepalive()
                last = loop.time()
        return fut.result()

    async def _answer(self, request: web.Request, req: ChatRequest, adapter: HttpAdapter,
                      fut: asyncio.Future[Answer], headers: dict[str, str], *, retry_safe: bool) -> web.StreamResponse:
        inbox_id, created = headers[INBOX_HEADER], int(time.time())
        timeout = adapter.config.reply_timeout_seconds
        try:
            answer = await self._wait(request, fut, asyncio.get_running_loop().time() + timeout)
        except _ClientGone:
            log.info("http: client left before the answer to %s; the turn goes on", inbox_id)
            return web.Response(status=499, text="client closed request")
        except WaiterStopped:
            raise _stopping(inbox_id, headers, retry_safe) from None
        if answer is None:
            raise _timed_out(inbox_id, timeout, headers, retry_safe)
        body = completion(f"chatcmpl-{inbox_id}", created, req.model, answer.text,
                          usage_object(answer.input_tokens, answer.output_tokens))
        return web.json_response(body, headers=headers)

    async def _stream(self, request: web.Request, req: ChatRequest, adapter: HttpAdapter,
                      fut: asyncio.Future[Answer], headers: dict[str, str], *, retry_safe: bool) -> web.StreamResponse:
        inbox_id, created = headers[INBOX_HEADER], int(time.time())
        cid, timeout = f"chatcmpl-{inbox_id}", adapter.config.reply_timeout_seconds
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", **headers})
        await resp.prepare(request)

        async def event(data: dict[str, Any]) -> None:
            await resp.write(b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")

        def chunk(delta: dict[str, Any] | None, finish: str | None = None,
                  usage: dict[str, int] | None = None) -> dict[str, Any]:
            return completion_chunk(cid, created, req.model, delta, finish,
                                    include_usage=req.include_usage, usage=usage)

        try:
            # The role first, at once: the client sees the request was taken while the agent works.
            await event(chunk({"role": "assistant", "content": ""}))
            try:
                answer = await self._wait(request, fut, asyncio.get_running_loop().time() + timeout,
                                          keepalive=lambda: resp.write(b": keep-alive\n\n"))
            except WaiterStopped:
                await event(_stopping(inbox_id, headers, retry_safe).body())
                return resp
            if answer is None:  # the status is sent already: the error travels as an event
                await event(_timed_out(inbox_id, timeout, headers, retry_safe).body())
                return resp
            parts = [c.text for c in answer.progress.chunks if c.text.strip()]
            for i, text in enumerate(parts):
                await event(chunk({"content": text if i == 0 else "\n\n" + text}))
            await event(chunk({}, "stop"))
            if req.include_usage:
                await event(chunk(None, usage=usage_object(answer.input_tokens, answer.output_tokens)))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (_ClientGone, ConnectionError):
            log.info("http: client left the stream of %s; the turn goes on", inbox_id)
        return resp

    # -- /v1/soulgate/replies/{inbox_id}: the answer to a request that timed out ---------------

    async def get_reply(self, request: web.Request) -> web.StreamResponse:
        adapter = self._authenticate(request)
        inbox_id = request.match_info["inbox_id"]
        try:
            inbox_id = str(uuid.UUID(inbox_id))
        except ValueError:
            raise ApiError(404, f"No request {inbox_id!r} is known.", code="reply_not_found") from None
        progress = (await self.services.store.replies.progress([inbox_id])).get(inbox_id)
        if progress is None or progress.channel != "http" or progress.account != adapter.account:
            raise ApiError(404, f"No request {inbox_id!r} is known.", code="reply_not_found")
        headers = {INBOX_HEADER: inbox_id}
        if not progress.finished:
            return web.json_response({"id": inbox_id, "object": "soulgate.reply", "status": "pending"},
                                     status=202, headers=headers)
        usage = await self.services.store.replies.usage([(inbox_id, progress.conversation_key)])
        answer = Answer(progress, *usage.get(inbox_id, (0, 0)))
        body = completion(f"chatcmpl-{inbox_id}", int(time.time()), progress.agent or "", answer.text,
                          usage_object(answer.input_tokens, answer.output_tokens))
        return web.json_response(body, headers=headers)


def _no_model(name: str) -> ApiError:
    return ApiError(404, f"The model `{name}` does not exist or you do not have access to it.",
                    code="model_not_found", param="model")


def _retry_hint(inbox_id: str, retry_safe: bool) -> str:
    if retry_safe:
        return "Retry with the same Idempotency-Key header to get its answer"
    return f"Fetch its answer later from GET /v1/soulgate/replies/{inbox_id}"


def _timed_out(inbox_id: str, timeout: float, headers: dict[str, str], retry_safe: bool) -> ApiError:
    # A plain retry would start a second turn; only a retry carrying the same key is safe.
    return ApiError(
        504, f"The agent did not answer within {timeout:g} seconds; the turn goes on. "
        f"{_retry_hint(inbox_id, retry_safe)}.", type="timeout", code="reply_timeout", inbox_id=inbox_id,
        headers={**headers, "x-should-retry": "true" if retry_safe else "false"})


def _stopping(inbox_id: str, headers: dict[str, str], retry_safe: bool) -> ApiError:
    return ApiError(
        503, f"This gateway instance is stopping; the turn goes on. {_retry_hint(inbox_id, retry_safe)}.",
        type="server_error", code="shutting_down", inbox_id=inbox_id,
        headers={**headers, "x-should-retry": "true" if retry_safe else "false"})
