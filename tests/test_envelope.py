"""Envelope and reply types: frozen, JSON round-trip safe; Markdown splitting; routing."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import (
    Attachment,
    Conversation,
    Envelope,
    Reply,
    ReplyAddress,
    Segment,
    Sender,
    split_markdown,
    utf16_len,
)
from gateway.config import RouteConfig
from gateway.router import parse_command, resolve_route
from gateway.testing import make_envelope

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
attachments = st.builds(
    Attachment, name=st.text(min_size=1, max_size=10), mime=st.text(max_size=10),
    size=st.none() | st.integers(0, 10**9), ref=st.none() | st.text(max_size=10),
    data=st.none() | st.binary(max_size=16),
)
segments = st.builds(
    Segment, kind=st.sampled_from(["mention", "link", "quote", "attachment", "code"]),
    value=st.text(max_size=20), label=st.none() | st.text(max_size=10),
    attachment=st.none() | attachments,
)
envelopes = st.builds(
    Envelope,
    channel=st.sampled_from(["telegram", "slack", "teams", "email"]),
    account=st.text(min_size=1, max_size=10),
    external_id=st.text(min_size=1, max_size=20),
    conversation=st.builds(Conversation, id=st.text(min_size=1, max_size=10),
                           kind=st.sampled_from(["direct", "group", "channel"]),
                           title=st.none() | st.text(max_size=10)),
    sender=st.builds(Sender, id=st.text(min_size=1, max_size=10), display_name=st.none() | st.text(max_size=10),
                     handle=st.none() | st.text(max_size=10), is_bot=st.booleans()),
    text=st.text(max_size=200),
    reply_to=st.builds(ReplyAddress, channel=st.text(min_size=1, max_size=5), account=st.text(min_size=1, max_size=5),
                       data=st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
    received_at=st.datetimes(timezones=st.just(UTC)),
    thread=st.none() | st.text(max_size=10),
    addressed=st.booleans(),
    segments=st.lists(segments, max_size=3).map(tuple),
    alt_ids=st.lists(st.text(max_size=10), max_size=2).map(tuple),
    raw=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


@given(envelopes)
def test_envelope_json_round_trip(env: Envelope) -> None:
    data = json.loads(json.dumps(env.to_json()))
    assert Envelope.from_json(data) == env


@given(st.builds(Reply, text=st.text(max_size=100), attachments=st.lists(attachments, max_size=2).map(tuple),
                 in_reply_to=st.none() | st.text(max_size=10),
                 meta=st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
def test_reply_json_round_trip(reply: Reply) -> None:
    assert Reply.from_json(json.loads(json.dumps(reply.to_json()))) == reply


def test_envelope_is_frozen_and_evolve_copies() -> None:
    env = make_envelope("hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.text = "changed"  # type: ignore[misc]
    other = env.evolve(text="changed")
    assert other.text == "changed" and env.text == "hi" and other.id == env.id


def test_bad_json_is_rejected_clearly() -> None:
    good = make_envelope("hi").to_json()
    with pytest.raises(ValueError, match="conversation kind"):
        Envelope.from_json({**good, "conversation": {"id": "x", "kind": "room"}})
    with pytest.raises(KeyError):
        Envelope.from_json({k: v for k, v in good.items() if k != "sender"})
    naive = {**good, "received_at": datetime(2026, 1, 1).isoformat()}
    assert Envelope.from_json(naive).received_at.tzinfo is not None


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=3000), st.integers(20, 500))
def test_split_markdown_respects_the_limit_and_keeps_the_text(text: str, limit: int) -> None:
    chunks = split_markdown(text, limit, measure=utf16_len)
    assert all(utf16_len(c) <= limit for c in chunks)
    if "```" not in text:
        squash = "".join(text.split())
        assert "".join("".join(chunks).split()) == squash


def test_split_markdown_closes_and_reopens_code_fences() -> None:
    code = "\n".join(f"line {i} = {i * 2}" for i in range(60))
    text = f"Intro paragraph.\n\n```python\n{code}\n```\n\nOutro 😀 paragraph."
    chunks = split_markdown(text, 300, measure=utf16_len)
    assert len(chunks) > 2
    for chunk in chunks:
        assert chunk.count("```") % 2 == 0, chunk
        assert utf16_len(chunk) <= 300
    assert all(c.startswith("```python") for c in chunks[1:-1])
    assert chunks[-1].endswith("Outro 😀 paragraph.")


def test_split_markdown_prefers_paragraph_boundaries() -> None:
    paras = [f"Paragraph {i}. " + "word " * 15 for i in range(8)]
    chunks = split_markdown("\n\n".join(paras), 250)
    for chunk in chunks:
        assert chunk.strip().startswith("Paragraph")


def test_utf16_len_counts_astral_characters_twice() -> None:
    assert utf16_len("a😀") == 3 and utf16_len("é") == 1


def test_parse_command() -> None:
    assert parse_command("/help") == ("help", "", None)
    assert parse_command("/Start@my_bot  a b ") == ("start", "a b", "my_bot")
    assert parse_command("not /a command") is None
    assert parse_command("/ nothing") is None


def test_most_specific_route_wins() -> None:
    routes = [
        RouteConfig(agent="default-ish"),
        RouteConfig(agent="tg", channel="telegram"),
        RouteConfig(agent="tg-acct", channel="telegram", account="main"),
        RouteConfig(agent="tg-conv", channel="telegram", conversation="42", require_mention=False),
    ]
    env = make_envelope("x", channel="telegram", account="main", conversation="42")
    assert resolve_route(env, routes, "assistant").agent == "tg-conv"
    assert not resolve_route(env, routes, "assistant").require_mention
    assert resolve_route(make_envelope("x", channel="telegram", account="main"), routes, "a").agent == "tg-acct"
    assert resolve_route(make_envelope("x", channel="telegram", account="other"), routes, "a").agent == "tg"
    assert resolve_route(make_envelope("x", channel="slack"), routes, "a").agent == "default-ish"
    assert resolve_route(make_envelope("x", channel="slack"), [], "assistant").agent == "assistant"
