"""Parsing JSON on the hot paths, through orjson, with the standard library's answers kept.

Every webhook body is parsed once and every claimed inbox row decoded once; with
the standard ``json`` module that was a noticeable share of the gateway's CPU per
message (docs/performance.md, ingress). orjson parses several times faster but is
stricter: it refuses lone UTF-16 surrogate escapes,
``NaN``/``Infinity``, text that is not UTF-8 and nesting deeper than 254 levels,
all of which platform payloads may carry and ``json`` reads, and it reads integers
beyond 64 bits as floats. Whatever orjson refuses, and any text with such a long
number, is read by ``json`` as before, so the answer (or the error: a
``ValueError``, ``UnicodeDecodeError`` or ``RecursionError``) is the same; only the
common case is faster. Serialising for the inbox is in storage/storable.py.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["loads"]


# orjson reads an integer beyond 64 bits as a float, silently: any run of 19 or more digits
# (in a number, or harmlessly in a string) sends the text to ``json``, which keeps it exact.
# Every digit is mapped to "0" and the zeros are searched for: C speed (``re`` took 8 us a
# webhook, more than orjson's parse).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _long_number(text: str | bytes | bytearray) -> bool:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return _LONG_NUMBER in data.translate(_DIGITS_TO_ZERO)


def loads(text: str | bytes | bytearray) -> Any:
    """What ``json.loads(text)`` returns, or raises."""
    if not _long_number(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
