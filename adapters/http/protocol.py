"""The OpenAI chat-completions wire format: parsing requests, shaping answers and errors.

Pure functions, no I/O, so the bad-input rules are easy to read and to test.
What is accepted:

- ``model`` names the agent; ``messages`` is a non-empty list whose last entry
  is a ``user`` message with text. Content is a string or a list of ``text``
  parts; other part types (images, audio) are refused, not silently dropped.
- Earlier ``user``/``assistant`` messages are returned as ``earlier``: they
  start a conversation that has no stored history yet (see the docs).
  ``system``/``developer`` messages are ignored: the agent's SOUL file is its
  system prompt. ``tool`` messages are ignored too.
- ``stream``, ``stream_options.include_usage`` and ``user`` are honoured.
  ``n`` other than 1 and client-side ``tools``/``functions`` are refused (the
  agent has its own tools). Sampling settings (``temperature``, ``max_tokens``
  …) are ignored: the SOUL file decides them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway import jsontext

__all__ = [
    "ApiError",
    "ChatRequest",
    "check_name",
    "completion",
    "completion_chunk",
    "model_object",
    "parse_chat_request",
    "usage_object",
]

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
#: longest conversation id / user id / idempotency key accepted
MAX_NAME = 256


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code, **self.extra}}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    text: str
    #: earlier user/assistant messages as (role, text), oldest first
    earlier: tuple[tuple[str, str], ...] = ()
    stream: bool = False
    include_usage: bool = False
    user: str | None = None


def check_name(value: Any, what: str, param: str | None = None) -> str:
    """A client-chosen id (``user``, conversation, idempotency key): 1-256 printable characters."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{what} must be a non-empty string", param=param)
    if len(value) > MAX_NAME or not value.isprintable():
        raise ApiError(400, f"{what} must be at most {MAX_NAME} printable characters", param=param)
    return value


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"{where}.content[{j}]: only text parts are supported, not {kind!r}",
                               param=f"{where}.content")
            parts.append(part["text"])
        return "\n".join(parts)
    raise ApiError(400, f"{where}.content must be a string or a list of text parts", param=f"{where}.content")


def parse_chat_request(raw: bytes) -> ChatRequest:
    """The request body, checked; raises :class:`ApiError` (400) naming what is wrong."""
    try:
        body = jsontext.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: ~1000 deep
        raise ApiError(400, f"We could not parse the JSON body of your request ({exc}).") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "you must provide a model parameter (the name of an agent)", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ApiError(400, f"{where} must be an object", param=where)
        role = msg.get("role")
        if not isinstance(role, str) or role not in _ROLES:  # a list or object: unhashable
            raise ApiError(400, f"{where}.role must be one of {', '.join(sorted(_ROLES))}", param=f"{where}.role")
        turns.append((role, _text(msg.get("content"), where)))
    role, text = turns[-1]
    if role != "user" or not text.strip():
        raise ApiError(400, "the last message must be a user message with text", param=f"messages[{len(turns) - 1}]")
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "n must be 1: an agent gives one answer", param="n")
    for key in ("tools", "functions"):
        if body.get(key):
            raise ApiError(400, f"{key} are not supported: the agent uses the tools its SOUL file allows",
                           param=key)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options must be an object like {\"include_usage\": true}",
                       param="stream_options")
    user = body.get("user")
    if user is not None:
        user = check_name(user, "user", "user")
    earlier = tuple((r, t) for r, t in turns[:-1] if r in ("user", "assistant") and t.strip())
    return ChatRequest(model=model, text=text, earlier=earlier, stream=stream,
                       include_usage=bool(options.get("include_usage", False)), user=user)


def usage_object(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens}


def completion(cid: str, created: int, model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
    """A non-streamed ``chat.completion``."""
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": usage,
    }


def completion_chunk(cid: str, created: int, model: str, delta: dict[str, Any] | None,
                     finish_reason: str | None = None, *, include_usage: bool = False,
                     usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` gives the final usage chunk (no choices)."""
    out: dict[str, Any] = {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:  # as OpenAI does: null on every chunk but the last
        out["usage"] = usage
    return out


def model_object(name: str, description: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "soulgate",
            "description": description}
