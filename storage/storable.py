"""What Postgres can hold, for values that come from outside.

Postgres refuses three things platform payloads may well carry: the NUL
character (in ``text`` and in ``jsonb``), lone UTF-16 surrogates (asyncpg cannot
even encode them as UTF-8), and NaN/Infinity in ``jsonb``. JSON allows
``\\u0000`` and ``\\ud800`` escapes and Python's ``json`` reads ``NaN``, so a single
odd message would otherwise fail its insert on every retry: the platform keeps
redelivering it (a webhook answered 5xx) or the poller never gets past it.

Such characters become U+FFFD (visible, and the rest of the text is kept) and
non-finite numbers become null. Values without them are returned as they are,
so the common case costs one scan and no copy.

Writers that send JSON text to Postgres use :func:`storable_json_text`: it
serialises once and scans the text (C speed), and walks the tree only when the
text shows a reason to (an escaped NUL, a lone surrogate, NaN, or more brackets
than ``MAX_DEPTH``, which any deeper nesting needs). That walk was ~15 % of the
ingress CPU when it ran on every event (docs/performance.md).

Nesting is cut at ``MAX_DEPTH`` levels as well. A payload nested just under
Python's recursion limit (about 1 000 levels; ``json`` refuses deeper ones) is
parsed fine at the webhook, but encoding it for the insert, or decoding the row
later in a worker's deeper call stack, would then raise RecursionError: a row no
worker could ever read. No real platform event nests anywhere near 100 levels.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from gateway.envelope import Envelope

__all__ = ["MAX_DEPTH", "storable_envelope", "storable_json", "storable_json_text", "storable_text"]

MAX_DEPTH = 100
_TOO_DEEP = f"[nested deeper than {MAX_DEPTH} levels: dropped]"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# In JSON text written with ensure_ascii=False: a NUL is always escaped (``\u0000``), a lone
# surrogate stays a raw character. A literal backslash-u-0000 typed by a user also matches:
# that only costs the slow path, never a wrong answer.
_UNSTORABLE_IN_JSON = re.compile("\\\\u0000|[\ud800-\udfff]")
_DUMPS = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def storable_text(text: str) -> str:
    return _UNSTORABLE.sub("\ufffd", text) if _UNSTORABLE.search(text) else text


def storable_json(value: Any) -> Any:
    """``value`` (a JSON-like tree) with every string storable, every float finite, depth bounded."""
    return _clean(value, 0)[0] if _dirty(value, 0) else value


def _dirty(value: Any, depth: int) -> bool:
    """Whether anything needs cleaning: a walk that allocates nothing, for the common clean case."""
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return True
        for k, v in value.items():
            if _UNSTORABLE.search(k) is not None or _dirty(v, depth + 1):
                return True
        return False
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            return True
        for v in value:
            if _dirty(v, depth + 1):
                return True
        return False
    if isinstance(value, float):
        return not math.isfinite(value)
    return False


def _clean(value: Any, depth: int) -> tuple[Any, bool]:
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            return _UNSTORABLE.sub("\ufffd", value), True
        return value, False
    if isinstance(value, float):
        return (value, False) if math.isfinite(value) else (None, True)
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        return _TOO_DEEP, True
    if isinstance(value, dict):
        items = [(_clean(k, depth), _clean(v, depth + 1)) for k, v in value.items()]
        if any(kc or vc for (_, kc), (_, vc) in items):
            return {k: v for (k, _), (v, _) in items}, True
        return value, False
    if isinstance(value, list | tuple):
        parts = [_clean(v, depth + 1) for v in value]
        if any(c for _, c in parts):
            return [v for v, _ in parts], True
        return value, False
    return value, False


def storable_json_text(value: Any) -> str:
    """``value`` as JSON text Postgres accepts as ``jsonb`` (what :func:`storable_json` would
    make of it, serialised); the tree is walked only when the text says it might need it."""
    try:
        # orjson writes NaN/Infinity as null (what cleaning makes of them), escapes a NUL as
        # \u0000 and refuses what ``json`` handles differently (lone surrogates, huge
        # integers, non-string keys, nesting deeper than 254): those take the standard path
        text = orjson.dumps(value).decode()
        unstorable = "\\u0000" in text  # a substring search: no surrogate can be in it
    except (orjson.JSONEncodeError, TypeError):
        try:
            text = _DUMPS(value)
        except (ValueError, RecursionError):  # NaN/Infinity, or nesting deeper than Python's stack
            return _DUMPS(storable_json(value))
        unstorable = _UNSTORABLE_IN_JSON.search(text) is not None
    if not unstorable and text.count("{") + text.count("[") <= MAX_DEPTH:  # depth <= number of openers
        return text
    return _DUMPS(storable_json(value))


def storable_envelope(envelope: Envelope) -> Envelope:
    """The envelope itself when Postgres can store it, else a cleaned copy (same id)."""
    data = envelope.to_json()
    return Envelope.from_json(_clean(data, 0)[0]) if _dirty(data, 0) else envelope
