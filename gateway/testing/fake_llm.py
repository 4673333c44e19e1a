"""Fake OpenAI-compatible LLM server for tests and benchmarks (part of the plugin test kit).

The gateway talks to models through litellm, which for ``openai/<name>`` models
with an ``api_base`` speaks the plain OpenAI HTTP API. This module serves that
API on 127.0.0.1 so the *real* litellm code path (request building, retries,
streaming assembly, exception mapping, Router fallbacks) runs in tests, while
the test decides what the "model" answers and which failures happen.

Typical use::

    async with start_fake_llm() as fake:
        fake.enqueue("fake-model", "hello", Fault.rate_limit(retry_after=1))
        resp = await litellm.acompletion(
            model="openai/fake-model", api_base=fake.api_base, api_key="sk-test",
            messages=[{"role": "user", "content": "hi"}],
        )
        assert fake.requests[-1].messages[-1]["content"] == "hi"

Per model (the name the client puts in the JSON body, i.e. without the
``openai/`` prefix) a test can set: a queue of replies, a hook computing the
reply from the request, persistent faults, fixed latency and a seeded failure
ratio. Every request is recorded, so a test can also assert what was *not*
sent (e.g. that a tool was not offered).

Nothing here talks to the internet; the server binds 127.0.0.1 on a random
free port. Not modelled: ``n`` > 1, logprobs, the Responses API, audio/images.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import itertools
import json
import math
import random
import re
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import pytest_asyncio
from aiohttp import web

__all__ = [
    "ANY_MODEL",
    "DEFAULT_EMBEDDING_DIM",
    "FakeLLM",
    "Fault",
    "RecordedRequest",
    "Text",
    "ToolCall",
    "ToolCalls",
    "Usage",
    "content_text",
    "cosine",
    "count_tokens",
    "fake_llm",
    "hash_embedding",
    "prompt_token_count",
    "start_fake_llm",
]

ANY_MODEL = "*"
"""Script key that applies to every model without a script of its own."""

DEFAULT_EMBEDDING_DIM = 64

# --------------------------------------------------------------------------
# Replies a test can script
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token counts to report instead of the fake's own estimate."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Text:
    """A plain assistant answer.

    ``finish_reason`` is normally "stop"; the fake sets "length" by itself when
    the request's ``max_tokens`` is smaller than the answer.
    """

    content: str
    finish_reason: str = "stop"
    usage: Usage | None = None


@dataclass(frozen=True)
class ToolCall:
    """One tool call. ``arguments`` may be a mapping (serialised to JSON) or a
    raw string, which is sent verbatim so tests can produce malformed JSON."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"
    id: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True)
class ToolCalls:
    """An assistant turn that calls tools (finish_reason "tool_calls").

    Nothing checks that the names were offered in the request: an unknown
    tool name is a legitimate thing for a real model to produce.
    """

    calls: Sequence[ToolCall]
    content: str | None = None
    usage: Usage | None = None


FaultKind: TypeAlias = Literal["status", "hang", "disconnect", "drop_stream"]


@dataclass(frozen=True)
class Fault:
    """A failure to inject. Use the class methods rather than the fields.

    - ``status``: answer an OpenAI-style JSON error with that HTTP status.
    - ``hang``: send nothing for ``seconds`` (None: until the server stops),
      then close the connection. Pair with a client timeout.
    - ``disconnect``: close the connection without any response.
    - ``drop_stream``: for a streaming request, send ``after_chunks`` chunks
      and then cut the connection (a non-streaming request just disconnects).
    """

    kind: FaultKind
    status: int = 500
    message: str = ""
    error_type: str = "server_error"
    code: str | None = None
    retry_after: float | None = None
    seconds: float | None = None
    after_chunks: int = 1

    @classmethod
    def http(
        cls,
        status: int,
        message: str | None = None,
        *,
        error_type: str = "server_error",
        code: str | None = None,
        retry_after: float | None = None,
    ) -> Fault:
        return cls(
            kind="status",
            status=status,
            message=message or f"fake upstream error {status}",
            error_type=error_type,
            code=code,
            retry_after=retry_after,
        )

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1.0) -> Fault:
        return cls.http(
            429,
            "Rate limit reached for requests (fake)",
            error_type="requests",
            code="rate_limit_exceeded",
            retry_after=retry_after,
        )

    @classmethod
    def server_error(cls) -> Fault:
        return cls.http(500, "The server had an error processing your request (fake)")

    @classmethod
    def unavailable(cls, retry_after: float | None = None) -> Fault:
        return cls.http(
            503,
            "The engine is currently overloaded (fake)",
            error_type="service_unavailable",
            retry_after=retry_after,
        )

    @classmethod
    def auth_error(cls) -> Fault:
        return cls.http(
            401,
            "Incorrect API key provided (fake)",
            error_type="invalid_request_error",
            code="invalid_api_key",
        )

    @classmethod
    def bad_request(cls, message: str = "Invalid request (fake)") -> Fault:
        return cls.http(400, message, error_type="invalid_request_error")

    @classmethod
    def context_window(cls) -> Fault:
        # litellm maps this exact wording/code to ContextWindowExceededError.
        return cls.http(
            400,
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9000 tokens. Please reduce the length of the messages.",
            error_type="invalid_request_error",
            code="context_length_exceeded",
        )

    @classmethod
    def hang(cls, seconds: float | None = None) -> Fault:
        return cls(kind="hang", seconds=seconds)

    @classmethod
    def disconnect(cls) -> Fault:
        return cls(kind="disconnect")

    @classmethod
    def drop_stream(cls, after_chunks: int = 1) -> Fault:
        return cls(kind="drop_stream", after_chunks=after_chunks)


Reply: TypeAlias = Text | ToolCalls | Fault
"""Anything a queue entry or hook can produce. A bare ``str`` means ``Text``."""

HookResult: TypeAlias = Reply | str | None
"""``None`` from a hook means "no opinion": fall through to the default echo."""

Hook: TypeAlias = Callable[["RecordedRequest"], HookResult | Awaitable[HookResult]]


# --------------------------------------------------------------------------
# What the fake records
# --------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One HTTP request as the fake received it.

    The named fields are the ones tests usually assert on; ``body`` keeps the
    whole decoded JSON for anything else. ``outcome`` is filled in once the
    fake decided what to do: "ok", "http:<status>", "hang", "disconnect",
    "drop_stream" or "invalid".
    """

    seq: int
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    outcome: str = "pending"

    @property
    def model(self) -> str | None:
        value = self.body.get("model")
        return value if isinstance(value, str) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        value = self.body.get("messages")
        return value if isinstance(value, list) else []

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        value = self.body.get("tools")
        return value if isinstance(value, list) else None

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools offered in this request (empty if none)."""
        names: list[str] = []
        for tool in self.tools or []:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                names.append(fn["name"])
        return names

    @property
    def tool_choice(self) -> Any:
        return self.body.get("tool_choice")

    @property
    def temperature(self) -> float | None:
        value = self.body.get("temperature")
        return float(value) if isinstance(value, int | float) else None

    @property
    def max_tokens(self) -> int | None:
        # Newer OpenAI clients send max_completion_tokens; either limits output.
        for key in ("max_completion_tokens", "max_tokens"):
            value = self.body.get(key)
            if isinstance(value, int):
                return value
        return None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    @property
    def input(self) -> Any:
        """The embeddings ``input`` field."""
        return self.body.get("input")

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return content_text(message.get("content"))
        return ""


# --------------------------------------------------------------------------
# Deterministic helpers (also usable by tests directly)
# --------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def count_tokens(text: str) -> int:
    """Rough, deterministic token count: words and punctuation marks.

    Not tiktoken (that would need its BPE files, which are downloaded at run
    time); it only has to be stable and grow with the text.
    """
    return len(_TOKEN_RE.findall(text))


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
        return " ".join(parts)
    return ""


def prompt_token_count(body: Mapping[str, Any]) -> int:
    # Mirrors the shape of OpenAI's accounting (a few tokens of overhead per
    # message plus the reply priming) so the numbers look plausible.
    total = 3
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += 4 + count_tokens(content_text(message.get("content")))
        for call in message.get("tool_calls") or []:
            fn = call.get("function", {}) if isinstance(call, dict) else {}
            total += count_tokens(str(fn.get("name", ""))) + count_tokens(
                str(fn.get("arguments", ""))
            )
    if body.get("tools"):
        total += count_tokens(json.dumps(body["tools"]))
    return total


# Very common English words carry no topic; hashing them would make unrelated
# sentences look similar.
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have i in is it its of on or that the this to "
    "was were will with you your we our they their he she his her do does did not no".split()
)


def _feature_slot(feature: str, dim: int) -> tuple[int, float]:
    # blake2b rather than hash(): Python's str hash is salted per process, and
    # embeddings stored in pgvector must stay comparable across runs.
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    number = int.from_bytes(digest, "little")
    sign = 1.0 if (number >> 63) & 1 else -1.0
    return number % dim, sign


def _stem(word: str) -> str:
    # Crude suffix stripping so "invoices", "invoiced" and "invoice" share the
    # word feature; good enough for recall tests, not linguistics.
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def hash_embedding(text: str, dim: int = DEFAULT_EMBEDDING_DIM) -> list[float]:
    """Deterministic bag-of-features embedding, L2-normalised.

    Features are the stemmed non-stopword words (weight 1.0) and their
    character trigrams (weight 0.35, for fuzzy overlap such as typos), hashed
    with a sign into ``dim`` buckets (the "hashing trick"). Texts that share
    words get a clearly higher cosine similarity than unrelated ones. Hash
    collisions add noise of about 1/sqrt(dim): at the default 64 dimensions
    unrelated short texts land around 0 +/- 0.15 (p99 ~0.3), and a query
    sharing 3 of 8 words with one of 50 documents finds it first ~93% of the
    time (~99% with 2 shared words at dim=256). Pick a larger ``dim`` for
    recall tests over many documents.
    An empty text maps to the first unit vector, because a zero vector has no
    cosine similarity (pgvector returns NaN for it).
    """
    if dim <= 0:
        raise ValueError("dim must be positive")
    vector = [0.0] * dim
    words = [_stem(w) for w in re.findall(r"\w+", text.lower()) if w not in _STOPWORDS]
    for word in words:
        slot, sign = _feature_slot("w:" + word, dim)
        vector[slot] += sign
        padded = f" {word} "
        for i in range(len(padded) - 2):
            slot, sign = _feature_slot("t:" + padded[i : i + 3], dim)
            vector[slot] += 0.35 * sign
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        unit = [0.0] * dim
        unit[0] = 1.0
        return unit
    return [v / norm for v in vector]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def _split_for_stream(text: str) -> list[str]:
    # Word-sized pieces with their trailing whitespace, like real token deltas;
    # joining them gives back the exact text.
    pieces = re.findall(r"\S+\s*|\s+", text)
    return pieces or [""]


def _truncate_to_tokens(text: str, limit: int) -> str:
    matches = list(_TOKEN_RE.finditer(text))
    if len(matches) <= limit:
        return text
    if limit <= 0:
        return ""
    return text[: matches[limit - 1].end()]


# --------------------------------------------------------------------------
# Per-model script
# --------------------------------------------------------------------------


@dataclass
class _Chaos:
    ratio: float
    rng: random.Random
    faults: tuple[Fault, ...]


@dataclass
class _ModelScript:
    queue: deque[Reply] = field(default_factory=deque)
    hook: Hook | None = None
    # (fault, remaining uses; None means forever)
    faults: list[tuple[Fault, int | None]] = field(default_factory=list)
    latency: float = 0.0
    chunk_delay: float = 0.0
    chaos: _Chaos | None = None

    def take_fault(self) -> Fault | None:
        if not self.faults:
            return None
        fault, remaining = self.faults[0]
        if remaining is not None:
            if remaining <= 1:
                self.faults.pop(0)
            else:
                self.faults[0] = (fault, remaining - 1)
        return fault


def _as_reply(value: Reply | str) -> Reply:
    return Text(value) if isinstance(value, str) else value


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class FakeLLM:
    """OpenAI-compatible fake. Create with :func:`start_fake_llm`."""

    def __init__(
        self,
        *,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        models: Iterable[str] = ("fake-model",),
        require_api_key: str | None = None,
    ) -> None:
        self.embedding_dim = embedding_dim
        self.require_api_key = require_api_key
        self.requests: list[RecordedRequest] = []
        self._models: list[str] = list(models)
        self._scripts: dict[str, _ModelScript] = {}
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._list_models)
        # Binding the socket ourselves is the public way to get a random free
        # port and know it before the first request.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        # A short shutdown timeout: hanging handlers are released by _closing,
        # and idle keep-alive connections from litellm's pool must not make
        # teardown wait a minute.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no ``/v1``)."""
        if self._port is None:
            raise RuntimeError("FakeLLM is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """What to pass as litellm's ``api_base`` / openai's ``base_url``."""
        return self.base_url + "/v1"

    # -- scripting ---------------------------------------------------------

    def _script(self, model: str) -> _ModelScript:
        if model not in self._scripts:
            self._scripts[model] = _ModelScript()
            if model != ANY_MODEL and model not in self._models:
                self._models.append(model)
        return self._scripts[model]

    def enqueue(self, model: str, *replies: Reply | str) -> None:
        """Answer the next requests for ``model`` with these, in order.
        Queued faults are consumed like answers (so "429 once, then ok" is
        ``enqueue(m, Fault.rate_limit(), "ok")``)."""
        self._script(model).queue.extend(_as_reply(r) for r in replies)

    def on_request(self, model: str, hook: Hook | None) -> None:
        """Compute answers from the request when the queue is empty. The hook
        may be sync or async and may return ``None`` to fall back to echo."""
        self._script(model).hook = hook

    def fail(self, model: str, fault: Fault, times: int | None = None) -> None:
        """Inject ``fault`` before the queue for the next ``times`` requests
        (None: until :meth:`clear_faults`)."""
        if times is not None and times <= 0:
            raise ValueError("times must be positive or None")
        self._script(model).faults.append((fault, times))

    def clear_faults(self, model: str) -> None:
        script = self._script(model)
        script.faults.clear()
        script.chaos = None

    def set_latency(self, model: str, seconds: float, chunk_delay: float = 0.0) -> None:
        """Wait ``seconds`` before answering (before the first chunk when
        streaming) and ``chunk_delay`` between stream chunks."""
        script = self._script(model)
        script.latency = seconds
        script.chunk_delay = chunk_delay

    def chaos(
        self,
        model: str,
        ratio: float,
        *,
        seed: int = 0,
        faults: Sequence[Fault] = (Fault.server_error(),),
    ) -> None:
        """Fail a ``ratio`` of requests with a fault drawn from ``faults``.
        The RNG is seeded, so the same request order gives the same failures."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError("ratio must be within [0, 1]")
        if not faults:
            raise ValueError("faults must not be empty")
        self._script(model).chaos = _Chaos(ratio, random.Random(seed), tuple(faults))

    def reset(self) -> None:
        """Forget all scripts and recorded requests (the port stays)."""
        self._scripts.clear()
        self.requests.clear()

    # -- inspection --------------------------------------------------------

    def requests_for(
        self, model: str | None = None, path: str = "/v1/chat/completions"
    ) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and (model is None or r.model == model)]

    @property
    def last_request(self) -> RecordedRequest:
        if not self.requests:
            raise AssertionError("the fake LLM received no request")
        return self.requests[-1]

    # -- request handling --------------------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest | web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        record = RecordedRequest(
            seq=next(self._seq),
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=body if isinstance(body, dict) else {},
            received_at=time.time(),
        )
        self.requests.append(record)
        if not isinstance(body, dict):
            record.outcome = "invalid"
            return _error_response(
                400, "request body is not a JSON object", "invalid_request_error"
            )
        if self.require_api_key is not None and record.api_key != self.require_api_key:
            record.outcome = "http:401"
            return _error_response(
                401,
                "Incorrect API key provided (fake)",
                "invalid_request_error",
                code="invalid_api_key",
            )
        return record

    def _script_for(self, model: str | None) -> _ModelScript:
        if model is not None and model in self._scripts:
            return self._scripts[model]
        return self._scripts.get(ANY_MODEL) or _ModelScript()

    def _pick_fault(self, script: _ModelScript) -> Fault | None:
        fault = script.take_fault()
        if fault is None and script.chaos is not None:
            chaos = script.chaos
            # Draw twice per request whatever the outcome, so the sequence of
            # decisions depends only on the seed and the request count.
            roll, pick = chaos.rng.random(), chaos.rng.randrange(len(chaos.faults))
            if roll < chaos.ratio:
                fault = chaos.faults[pick]
        return fault

    async def _apply_fault(
        self, request: web.Request, record: RecordedRequest, fault: Fault
    ) -> web.StreamResponse:
        if fault.kind == "status":
            record.outcome = f"http:{fault.status}"
            return _error_response(
                fault.status,
                fault.message,
                fault.error_type,
                code=fault.code,
                retry_after=fault.retry_after,
            )
        if fault.kind == "hang":
            record.outcome = "hang"
            # Released early when the server stops, so teardown never waits on it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.seconds)
        else:
            record.outcome = fault.kind
        return _drop_connection(request)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        if isinstance(recorded, web.Response):
            return recorded
        record = recorded
        model = record.model
        if model is None or not isinstance(record.body.get("messages"), list):
            record.outcome = "http:400"
            return _error_response(
                400, "'model' and 'messages' are required", "invalid_request_error"
            )
        script = self._script_for(model)
        if script.latency:
            await asyncio.sleep(script.latency)
        fault = self._pick_fault(script)
        if fault is None and script.queue:
            queued = script.queue.popleft()
            if isinstance(queued, Fault):
                fault = queued
            else:
                return await self._answer(request, record, script, queued)
        if fault is not None and not (fault.kind == "drop_stream" and record.stream):
            return await self._apply_fault(request, record, fault)
        try:
            reply = await self._reply_from_hook(script, record)
        except Exception as exc:  # a broken hook should fail the test, loudly
            record.outcome = "http:500"
            return _error_response(500, f"fake LLM hook raised {exc!r}", "server_error")
        if isinstance(reply, Fault):
            return await self._apply_fault(request, record, reply)
        return await self._answer(request, record, script, reply, drop=fault)

    async def _reply_from_hook(self, script: _ModelScript, record: RecordedRequest) -> Reply:
        if script.hook is not None:
            result = script.hook(record)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                return _as_reply(result)
        # Default: deterministic echo, so an unscripted test still gets a
        # stable answer that proves which message reached the model.
        return Text(f"echo: {record.last_user_text}")

    def _completion_parts(
        self,
        record: RecordedRequest,
        reply: Text | ToolCalls,
    ) -> tuple[dict[str, Any], str, dict[str, int]]:
        """The assistant message, the finish reason and the usage block."""
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if isinstance(reply, Text):
            content, finish = reply.content, reply.finish_reason
            limit = record.max_tokens
            if limit is not None and count_tokens(content) > limit:
                content, finish = _truncate_to_tokens(content, limit), "length"
            message["content"] = content
            completion_tokens = count_tokens(content)
        else:
            message["content"] = reply.content
            message["tool_calls"] = [
                {
                    "id": call.id or f"call_fake_{next(self._ids)}",
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json()},
                }
                for call in reply.calls
            ]
            finish = "tool_calls"
            completion_tokens = count_tokens(reply.content or "") + sum(
                count_tokens(c.name) + count_tokens(c.arguments_json()) + 3 for c in reply.calls
            )
        override = reply.usage
        prompt_tokens = prompt_token_count(record.body)
        if override is not None:
            prompt_tokens, completion_tokens = override.prompt_tokens, override.completion_tokens
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return message, finish, usage

    async def _answer(
        self,
        request: web.Request,
        record: RecordedRequest,
        script: _ModelScript,
        reply: Text | ToolCalls,
        drop: Fault | None = None,
    ) -> web.StreamResponse:
        message, finish, usage = self._completion_parts(record, reply)
        completion_id = f"chatcmpl-fake-{record.seq}"
        created = int(record.received_at)
        model = record.model or ""
        if not record.stream:
            record.outcome = "ok"
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                },
                headers={"x-request-id": f"req_fake_{record.seq}"},
            )

        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-request-id": f"req_fake_{record.seq}",
            }
        )
        await response.prepare(request)
        include_usage = record.include_usage

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                # OpenAI sends "usage": null on every chunk but the extra last one.
                data["usage"] = None
            return data

        chunks: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""}, None)]
        if message.get("content"):
            chunks += [
                chunk({"content": piece}, None) for piece in _split_for_stream(message["content"])
            ]
        for index, call in enumerate(message.get("tool_calls") or []):
            # The first delta of a tool call carries id, type and name; the
            # arguments follow in fragments, as OpenAI streams them.
            chunks.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    },
                    None,
                )
            )
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), 8):
                chunks.append(
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "function": {"arguments": arguments[start : start + 8]},
                                }
                            ]
                        },
                        None,
                    )
                )
        chunks.append(chunk({}, finish))
        if include_usage:
            # The usage chunk comes last and has an empty choices list.
            chunks.append(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": usage,
                }
            )

        for sent, data in enumerate(chunks):
            if drop is not None and sent >= drop.after_chunks:
                record.outcome = "drop_stream"
                _drop_connection(request)
                return response
            if sent and script.chunk_delay:
                await asyncio.sleep(script.chunk_delay)
            await response.write(f"data: {json.dumps(data)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        record.outcome = "ok"
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        if isinstance(recorded, web.Response):
            return recorded
        record = recorded
        script = self._script_for(record.model)
        if script.latency:
            await asyncio.sleep(script.latency)
        fault = self._pick_fault(script)
        # Only a queued fault applies to embeddings: text replies are for chat.
        head = script.queue[0] if script.queue else None
        if fault is None and isinstance(head, Fault):
            script.queue.popleft()
            fault = head
        if fault is not None:
            return await self._apply_fault(request, record, fault)

        texts = _embedding_inputs(record.input)
        if texts is None:
            record.outcome = "http:400"
            return _error_response(
                400,
                "'input' must be a string, a list of strings or token arrays",
                "invalid_request_error",
            )
        dimensions = record.body.get("dimensions")
        dim = dimensions if isinstance(dimensions, int) and dimensions > 0 else self.embedding_dim
        # The openai client asks for base64 unless told otherwise and decodes
        # it itself, so both encodings have to be right.
        as_base64 = record.body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = hash_embedding(text, dim)
            encoded: list[float] | str = vector
            if as_base64:
                encoded = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(count_tokens(t) for t in texts)
        record.outcome = "ok"
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": record.model or "",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        record = RecordedRequest(
            seq=next(self._seq),
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body={},
            received_at=time.time(),
            outcome="ok",
        )
        self.requests.append(record)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake-llm"}
                    for m in self._models
                ],
            }
        )


def _embedding_inputs(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        # Token ids: one array, or a list of arrays. Turned into pseudo-words so
        # equal token sequences still embed equally.
        if all(isinstance(v, int) for v in value):
            return [" ".join(f"tok{v}" for v in value)]
        if all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value):
            return [" ".join(f"tok{t}" for t in v) for v in value]
    return None


def _error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    code: str | None = None,
    retry_after: float | None = None,
) -> web.Response:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
    return web.json_response(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}},
        status=status,
        headers=headers,
    )


def _drop_connection(request: web.Request) -> web.Response:
    # Closing the transport without writing a status line is what a crashed
    # upstream or a cut TCP connection looks like to the client.
    if request.transport is not None:
        request.transport.close()
    # aiohttp wants a response object back; it cannot be written any more.
    return web.Response(status=499)


@contextlib.asynccontextmanager
async def start_fake_llm(
    *,
    embedding_dim: int = DEFAULT_EMBEDDING_DIM,
    models: Iterable[str] = ("fake-model",),
    require_api_key: str | None = None,
) -> AsyncIterator[FakeLLM]:
    """Run a :class:`FakeLLM` for the duration of the ``async with`` block."""
    fake = FakeLLM(embedding_dim=embedding_dim, models=models, require_api_key=require_api_key)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    """A started fake for one test. Import it into a test module (or list this
    module in ``pytest_plugins``) to use it."""
    async with start_fake_llm() as fake:
        yield fake
