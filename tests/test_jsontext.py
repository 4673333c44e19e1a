"""orjson on the hot paths gives the standard library's answers (gateway/jsontext.py, storable).

orjson refuses several things ``json`` accepts and platform payloads may carry (huge
integers, lone surrogates, NaN, deep nesting, other encodings); those must take the
standard path, so a webhook that parsed before still parses, to the same value, and
an envelope stores as the same JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway import jsontext
from storage.storable import MAX_DEPTH, storable_json, storable_json_text
from tests.faults.fuzzing import JSON_VALUES, fuzz_settings


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN (json reads NaN literals back as NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@fuzz_settings(300)
@given(JSON_VALUES)
def test_loads_reads_what_json_writes_as_json_reads_it(value: Any) -> None:
    text = json.dumps(value)  # NaN, Infinity, lone surrogate escapes, huge integers included
    assert _same(jsontext.loads(text), json.loads(text))
    assert _same(jsontext.loads(text.encode()), json.loads(text.encode()))


@pytest.mark.parametrize("text", [
    b'{"n": 123456789012345678901234567890}', b'{"x": NaN, "y": -Infinity}', b'"\\ud800 lone"',
    '{"utf16": "é"}'.encode("utf-16"), b"[" * 300 + b"]" * 300, b'{"a": 1, "a": 2}',
])
def test_what_orjson_refuses_is_read_by_json(text: bytes) -> None:
    assert _same(jsontext.loads(text), json.loads(text))


@pytest.mark.parametrize("text", [b"", b"{", b"nope", b'{"a": 1} trailing', b"\xff\xfe\x00garbage"])
def test_what_is_not_json_raises_what_json_raises(text: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)) as ours:
        jsontext.loads(text)
    with pytest.raises((ValueError, UnicodeDecodeError)) as theirs:
        json.loads(text)
    assert type(ours.value) is type(theirs.value)


@fuzz_settings(300)
@given(JSON_VALUES)
@example({"k": 2**70, "n": float("nan")})  # orjson refuses the integer; NaN is null either way
@example([[[[["deep"]]]]] * 3)
def test_storable_json_text_is_storable_json_serialised(value: Any) -> None:
    text = storable_json_text(value)
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text.replace('"', "")
    assert json.loads(text) == json.loads(json.dumps(storable_json(value), ensure_ascii=False))


@given(st.integers(MAX_DEPTH - 2, 300))
@fuzz_settings(20)
def test_nesting_is_cut_the_same_way_on_both_paths(depth: int) -> None:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    assert json.loads(storable_json_text(value)) == storable_json(value)
