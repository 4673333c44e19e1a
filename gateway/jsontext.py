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
import re
from typing import Any

import orjson

__all__ = ["loads"]


# orjson reads an integer beyond 64 bits as a float, silently: any run of 19 or more digits
# (in a number, or harmlessly in a string) sends the text to ``json``, which keeps it exact
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")


def loads(text: str | bytes | bytearray) -> Any:
    """What ``json.loads(text)`` returns, or raises."""
    long_digits = _LONG_DIGITS.search(text) if isinstance(text, str) else _LONG_DIGITS_BYTES.search(text)
    if long_digits is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
