"""Hypothesis strategies for malformed platform payloads, and the checks every inbound path must pass.

The payload strategies start from a real event (built by the fakes) and break it
a few places at a time: a value of the wrong type, an odd string (NUL, lone
surrogates, bidi marks, 100 000 characters), a missing or extra key, a deep
nesting. Mutating a realistic template reaches far deeper into a normalizer than
random JSON would, which the parser refuses at the first key. Raw-byte strategies
cover what never becomes JSON at all (binary, truncated bodies, nesting deeper
than Python's recursion limit).

Hypothesis runs in a worker thread (``run_in_thread``) while the gateway keeps
serving on the test's event loop; each example hops back to the loop for its
HTTP request and SQL checks.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.strategies import SearchStrategy

from gateway import Envelope, Reply, ReplyAddress
from storage.storable import storable_envelope

__all__ = [
    "JSON_VALUES",
    "ODD_TEXT",
    "assert_storable",
    "assert_valid_envelope",
    "bodies",
    "check_database",
    "deep_mime",
    "fuzz_settings",
    "mail_mutants",
    "mails",
    "mutants",
    "run_in_thread",
    "scalar",
]

T = TypeVar("T")

#: SOULGATE_FUZZ_EXAMPLES=N runs every fuzz test with N times its default example count, randomized
SCALE = float(os.environ.get("SOULGATE_FUZZ_EXAMPLES", "0") or 0)

# Even without an example database hypothesis caches data (the constants it mines from the code
# under test) in ./.hypothesis: keep that out of the repository.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "soulgate-hypothesis"))


def fuzz_settings(examples: int) -> settings:
    """Few derandomized examples by default (CI stays fast and repeatable); many random ones on request.

    No example database: nothing is written to a ``.hypothesis/`` folder in the repository.
    """
    return settings(
        max_examples=max(1, int(examples * SCALE)) if SCALE else examples,
        derandomize=not SCALE,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )


# -- values --------------------------------------------------------------------------------

_ODD = [
    "", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "\u202etxet", "\ufeff", "\u200b\u200d", "e\u0301",
    "\r\n\t", "😀" * 3, "👩‍👩‍👧", "\U0010ffff", "NaN", "-1", "1e400", "null", "<@U0BOT>", "<>", "<<a|>>",
    "&lt;&amp;&gt;", "@soulgate_bot", "/start@soulgate_bot", "/help", "<at>Soulgate</at>",
    "a:1;messageid=", ";messageid=;messageid=1", "https://", "http://[::1", "x" * 100_000, "😀" * 5000,
]
ODD_TEXT: SearchStrategy[str] = st.one_of(
    st.sampled_from(_ODD),
    st.text(max_size=40),
    st.text(st.characters(codec=None, categories=("Cs", "Cc", "Cf", "Zs", "Mn", "So")), max_size=12),
)
ODD_INTS: SearchStrategy[int] = st.one_of(
    st.integers(-3, 3), st.integers(), st.sampled_from([2**31, 2**53 + 1, 2**63, -(2**63) - 1, 10**30]),
)
_SCALARS: SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), ODD_INTS, st.floats(allow_nan=True, allow_infinity=True), ODD_TEXT,
)
#: any JSON value Python's ``json`` would write (NaN and Infinity included: Python reads them back)
JSON_VALUES: SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
    max_leaves=12,
)


def _nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"k": leaf}
    return leaf


def _same_kind(value: Any) -> SearchStrategy[Any]:
    """A value of the same JSON type: it passes a schema check and reaches the normalizer."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return ODD_INTS
    if isinstance(value, float):
        return st.floats(allow_nan=True, allow_infinity=True)
    if isinstance(value, str):
        return ODD_TEXT
    if isinstance(value, list):
        return st.lists(JSON_VALUES, max_size=3).map(lambda extra: [*value, *extra])
    return JSON_VALUES


def _slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key-or-index) pair in a JSON document."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in list(items):
        yield node, key
        yield from _slots(child)


@st.composite
def mutants(draw: st.DrawFn, template: Any, max_changes: int = 4) -> Any:
    """``template`` broken in 1..max_changes places (same-type odd values most of all)."""
    holder = {"root": copy.deepcopy(template)}
    for _ in range(draw(st.integers(1, max_changes))):
        parent, key = draw(st.sampled_from(list(_slots(holder))))
        op = draw(st.sampled_from(("same", "same", "same", "any", "drop", "add", "nest")))
        if op == "same":
            parent[key] = draw(_same_kind(parent[key]))
        elif op == "any":
            parent[key] = draw(JSON_VALUES)
        elif op == "drop" and parent is not holder:
            del parent[key]
        elif op == "add" and isinstance(parent[key], dict):
            parent[key][draw(ODD_TEXT)] = draw(JSON_VALUES)
        elif op == "nest":
            parent[key] = _nested(draw(st.integers(1, 200)), parent[key])
    return holder["root"]


def _deep_body(prefix: bytes, suffix: bytes) -> SearchStrategy[bytes]:
    """Arrays nested deep inside a real payload: Python's json gives up near 1 000 levels, and a
    payload just under that limit may still break whatever walks it later."""
    depths = st.one_of(st.sampled_from([500, 900, 950, 980, 1000, 3000, 100_000]), st.integers(1, 5000))
    return depths.map(lambda n: prefix + b"[" * n + b"]" * n + suffix)


def bodies(template: dict[str, Any], deep_at: str) -> SearchStrategy[bytes]:
    """Request bodies: mostly a mutated ``template``, else raw bytes, truncated JSON, deep nesting.

    ``deep_at`` names a top-level key whose value is replaced by the deep nesting.
    """
    whole = json.dumps(template).encode()
    rest = {k: v for k, v in template.items() if k != deep_at}
    prefix = json.dumps(rest).encode()[:-1] + (b", " if rest else b"") + json.dumps(deep_at).encode() + b": "
    return st.one_of(
        mutants(template).map(lambda doc: json.dumps(doc).encode()),
        mutants(template).map(lambda doc: json.dumps(doc).encode()),
        mutants(template).map(lambda doc: json.dumps(doc).encode()),
        st.binary(max_size=300),
        st.integers(0, len(whole)).map(lambda n: whole[:n]),
        _deep_body(prefix, b"}"),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    )


# -- mail ----------------------------------------------------------------------------------

_MAIL_HEADERS = (
    "From", "Reply-To", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References", "Date",
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version", "Auto-Submitted",
    "Precedence", "List-Id", "Authentication-Results", "Return-Path", "X-Autoreply",
)
_ODD_BYTES: SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=40),
    ODD_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([
        b"\x00", b"\xff\xfe\xfd", b"=?utf-8?B?////?=", b"=?x-unknown?Q?a=FF?=", b"=?utf-8?Q?=00?=", b"<", b"<@>",
        b"a@b@c", b'"\\" <@example.org>', b"multipart/mixed; boundary=", b'multipart/mixed; boundary="x"',
        b"text/plain; charset=x-unknown", b"text/html; charset=utf-16", b"base64", b"quoted-printable",
        b"attachment; filename*=utf-8''%FF%00", b"Mon, 99 Foo 99999 99:99:99 +9999", b"[", b"\t", b"--",
    ]),
)


def deep_mime(depth: int) -> bytes:
    """A mail whose multiparts nest ``depth`` deep (the parser recurses once per level)."""
    head = b"From: a@example.org\r\nMessage-ID: <deep@example.org>\r\n"
    opening = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                       for i in range(depth))
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nhello" + closing


@st.composite
def mail_mutants(draw: st.DrawFn, template: bytes, max_changes: int = 4) -> bytes:
    """A raw mail broken in 1..max_changes lines: odd headers, junk lines, splices, a cut."""
    lines = template.split(b"\r\n")
    for _ in range(draw(st.integers(1, max_changes))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(("header", "header", "junk", "drop", "splice", "cut")))
        if op == "header":
            lines.insert(i, draw(st.sampled_from(_MAIL_HEADERS)).encode() + b": " + draw(_ODD_BYTES))
        elif op == "junk":
            lines[i] = draw(_ODD_BYTES)
        elif op == "drop" and len(lines) > 1:
            del lines[i]
        elif op == "splice":
            j = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:j] + draw(_ODD_BYTES) + lines[i][j:]
        elif op == "cut":
            raw = b"\r\n".join(lines)
            return raw[:draw(st.integers(0, len(raw)))]
    return b"\r\n".join(lines)


def mails(templates: list[bytes], depths: tuple[int, ...] = (10, 100, 300, 1000)) -> SearchStrategy[bytes]:
    """Raw mails: mutated templates, random bytes, multiparts nested ``depths`` deep."""
    return st.one_of(
        st.sampled_from(templates).flatmap(mail_mutants),
        st.sampled_from(templates).flatmap(mail_mutants),
        st.binary(max_size=400),
        st.sampled_from(depths).map(deep_mime),
    )


# -- checks --------------------------------------------------------------------------------


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list | tuple):
        for v in node:
            yield from _strings(v)


def _numbers(node: Any) -> Iterator[float]:
    if isinstance(node, float):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _numbers(v)
    elif isinstance(node, list | tuple):
        for v in node:
            yield from _numbers(v)


def assert_storable(data: Any, what: str) -> None:
    """What Postgres holds in jsonb and text: no NUL, no lone surrogate, no NaN or Infinity."""
    for s in _strings(data):
        assert "\x00" not in s, f"{what}: a NUL character ({s[:60]!r})"
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise AssertionError(f"{what}: a lone surrogate ({s[:60]!r})") from None
    for x in _numbers(data):
        assert math.isfinite(x), f"{what}: a non-finite number {x!r}"


def _opt_str(value: Any, what: str) -> None:
    assert value is None or isinstance(value, str), f"{what} is {type(value).__name__}, not a string"


def assert_valid_envelope(env: Any, channel: str, account: str) -> None:
    """A well-typed envelope that survives JSON (and so the inbox) unchanged."""
    assert isinstance(env, Envelope), f"not an Envelope: {env!r}"
    assert (env.channel, env.account, env.reply_to.channel, env.reply_to.account) == (
        channel, account, channel, account)
    assert isinstance(env.external_id, str) and env.external_id, "an empty external id"
    assert all(isinstance(a, str) and a for a in env.alt_ids), f"alt_ids {env.alt_ids!r}"
    assert isinstance(env.text, str) and isinstance(env.addressed, bool)
    assert isinstance(env.conversation.id, str) and env.conversation.id, "an empty conversation id"
    assert env.conversation.kind in ("direct", "group", "channel")
    _opt_str(env.conversation.title, "conversation.title")
    _opt_str(env.thread, "thread")
    assert isinstance(env.sender.id, str) and isinstance(env.sender.is_bot, bool)
    _opt_str(env.sender.display_name, "sender.display_name")
    _opt_str(env.sender.handle, "sender.handle")
    for seg in env.segments:
        assert seg.kind in ("mention", "link", "quote", "attachment", "code") and isinstance(seg.value, str)
        _opt_str(seg.label, "segment.label")
        if seg.attachment is not None:
            att = seg.attachment
            assert isinstance(att.name, str) and isinstance(att.mime, str), f"attachment {att!r}"
            assert att.size is None or (isinstance(att.size, int) and not isinstance(att.size, bool))
            _opt_str(att.ref, "attachment.ref")
    assert isinstance(env.reply_to.data, dict) and isinstance(env.raw, dict)
    stored = storable_envelope(env)  # what the inbox makes of it (NUL, lone surrogates, NaN replaced)
    wire = stored.to_json()
    assert_storable(wire, "envelope")
    assert Envelope.from_json(json.loads(json.dumps(wire))) == stored, "the envelope changes through JSON"


async def check_database(db: Any, since_seq: int, channel: str, account: str) -> list[Envelope]:
    """No half-written admission anywhere; the envelopes of inbox rows newer than ``since_seq``."""
    orphans = await db.fetch(
        "SELECT k.key FROM inbox_keys k LEFT JOIN inbox i ON i.id = k.inbox_id WHERE i.id IS NULL")
    assert not orphans, f"inbox_keys rows without their inbox row: {[r['key'] for r in orphans]}"
    keyless = await db.fetch(
        "SELECT i.id FROM inbox i WHERE NOT EXISTS (SELECT 1 FROM inbox_keys k WHERE k.inbox_id = i.id"
        " AND k.channel = i.channel AND k.account = i.account AND k.key = i.external_id)")
    assert not keyless, f"inbox rows without their natural key: {keyless}"
    rows = await db.fetch(
        "SELECT id, seq, channel, account, external_id, conversation_key, envelope FROM inbox"
        " WHERE seq > $1 ORDER BY seq", since_seq)
    out = []
    for row in rows:
        env = Envelope.from_json(row["envelope"])
        assert_valid_envelope(env, channel, account)
        assert (env.id, env.channel, env.account, env.external_id, env.conversation_key) == (
            str(row["id"]), row["channel"], row["account"], row["external_id"], row["conversation_key"])
        out.append(env)
    return out


async def scalar(db: Any, query: str, *args: Any) -> Any:
    return (await db.fetch(query, *args))[0][0]


async def max_seq(db: Any) -> int:
    return int(await scalar(db, "SELECT coalesce(max(seq), 0) FROM inbox"))


async def check_outbox(db: Any, since_id: int) -> int:
    """Proactive sends written since ``since_id`` are whole (address and body read back); their count."""
    rows = await db.fetch("SELECT address, body FROM outbox WHERE id > $1", since_id)
    for row in rows:
        ReplyAddress.from_json(row["address"])
        Reply.from_json(row["body"])
    return len(rows)


async def drained(db: Any, within: float = 30.0) -> None:
    """Every admitted row was processed (none left pending, none failed): no poison in the inbox."""
    async with asyncio.timeout(within):  # the workers live in the gateway: poll the table
        while await scalar(db, "SELECT count(*) FROM inbox WHERE status IN ('pending', 'claimed')"):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    failed = await db.fetch("SELECT id, error FROM inbox WHERE status = 'failed'")
    assert not failed, f"turns failed on fuzzed envelopes: {failed}"


def run_in_thread(
    strategy: SearchStrategy[T], examples: int, check: Callable[[T], Coroutine[Any, Any, None]],
    explicit: tuple[T, ...] = (),
) -> Awaitable[None]:
    """Run hypothesis over ``check`` in a worker thread; ``check`` runs on the calling loop.

    ``explicit`` are regression examples (bugs found before), always tried first.
    """
    loop = asyncio.get_running_loop()

    def one(value: T) -> None:
        asyncio.run_coroutine_threadsafe(check(value), loop).result(timeout=120)

    test = given(strategy)(one)
    for value in explicit:
        test = example(value)(test)
    return asyncio.to_thread(fuzz_settings(examples)(test))
