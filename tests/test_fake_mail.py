"""The email fakes work with the real client libraries the gateway uses.

aioimaplib against pymap (tests.fakes.mailserver.start_imap_server) and
aiosmtplib against aiosmtpd (start_smtp_server), plus the message builders
in tests.fakes.mailmessages. These tests pin down both the fakes and the
client behaviour the email adapter relies on (see docs: CHANNELS.md, Email).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import aiosmtplib
import pytest
from aioimaplib import IMAP4, IMAP4_SSL, Response

from tests.fakes import mailmessages as mm
from tests.fakes import mailserver
from tests.fakes.mailserver import (
    SMTP_PASSWORD,
    SMTP_USER,
    FakeImapServer,
    FakeSmtpServer,
    SmtpMode,
    start_imap_server,
    start_smtp_server,
)

# The imap_server/smtp_server fixtures live in the fakes module; pytest finds
# fixtures by module attribute, so bind them here (there is no conftest for
# them). Plain assignments rather than `from ... import imap_server`: ruff
# reports every test parameter of the same name as shadowing an import
# (F811), and `pytest_plugins` would warn that the already-imported module
# cannot be assert-rewritten.
imap_server = mailserver.imap_server
smtp_server = mailserver.smtp_server

CLIENT_TIMEOUT = 5.0


# --------------------------------------------------------------------------
# aioimaplib helpers
# --------------------------------------------------------------------------


@asynccontextmanager
async def imap_client(
    server: FakeImapServer, *, conn_lost_cb: Callable[[Exception | None], None] | None = None
) -> AsyncIterator[IMAP4]:
    """A logged-in aioimaplib client; logs out (best effort) afterwards."""
    client: IMAP4
    if server.tls:
        client = IMAP4_SSL(
            host=server.host,
            port=server.port,
            timeout=CLIENT_TIMEOUT,
            ssl_context=server.client_ssl_context(),
        )
    else:
        client = IMAP4(host=server.host, port=server.port, timeout=CLIENT_TIMEOUT, conn_lost_cb=conn_lost_cb)
    await client.wait_hello_from_server()
    response = await client.login(server.user, server.password)
    assert response.result == "OK", response
    try:
        yield client
    finally:
        # The connection may be gone already (drop_connections tests); a
        # logout on a dead connection would only wait for its timeout.
        if client.protocol.transport is not None and not client.protocol.transport.is_closing():
            with suppress(Exception):
                await asyncio.wait_for(client.logout(), 2)


_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")


def parse_uid_fetch(response: Response) -> dict[int, tuple[bytes, set[str]]]:
    """Turn aioimaplib's UID FETCH lines into {uid: (raw, flags)}.

    aioimaplib hands back a flat list per response: for each message a
    ``b'<seq> FETCH (UID n ... BODY[] {size}'`` line, then the literal as a
    *bytearray*, then the rest of the item (at least ``b')'``; attributes may
    also come after the literal), and finally the tagged completion text
    (``b'UID FETCH completed.'``). Only bytearray entries are literals.
    """
    result: dict[int, tuple[bytes, set[str]]] = {}
    item: list[bytes | bytearray] = []

    def flush() -> None:
        if not item:
            return
        text = b" ".join(bytes(p) for p in item if not isinstance(p, bytearray))
        literal = next((bytes(p) for p in item if isinstance(p, bytearray)), b"")
        uid_match = _UID.search(text)
        assert uid_match, f"FETCH item without UID: {text!r}"
        flags_match = _FLAGS.search(text)
        flags = set(flags_match.group(1).decode().split()) if flags_match else set()
        result[int(uid_match.group(1))] = (literal, flags)
        item.clear()

    for line in response.lines[:-1]:  # the last line is the tagged status text
        if not isinstance(line, bytearray) and _FETCH_START.match(line):
            flush()
        item.append(line)
    flush()
    return result


def select_uidvalidity(response: Response) -> int:
    for line in response.lines:
        match = re.search(rb"\[UIDVALIDITY (\d+)\]", line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"no UIDVALIDITY in {response.lines!r}")


def select_exists(response: Response) -> int:
    for line in response.lines:
        match = re.fullmatch(rb"(\d+) EXISTS", bytes(line))
        if match:
            return int(match.group(1))
    raise AssertionError(f"no EXISTS in {response.lines!r}")


# --------------------------------------------------------------------------
# IMAP: aioimaplib against pymap
# --------------------------------------------------------------------------


async def test_imap_starts_empty_and_uids_start_at_101(imap_server: FakeImapServer) -> None:
    assert await imap_server.messages() == []
    assert await imap_server.list_mailboxes() == ["INBOX"]
    async with imap_client(imap_server) as client:
        selected = await client.select("INBOX")
        assert selected.result == "OK"
        assert select_exists(selected) == 0
    # pymap's dict backend hands out UIDs from 101, not 1.
    assert await imap_server.deliver(mm.plain_text_message()) == 101
    assert await imap_server.deliver(mm.plain_text_message()) == 102


async def test_imap_select_uidvalidity_and_peek_fetch_keeps_unseen(
    imap_server: FakeImapServer,
) -> None:
    raw = mm.plain_text_message("Bonjour, ça va?\n", subject="Peek me")
    uid = await imap_server.deliver(raw)

    async with imap_client(imap_server) as client:
        selected = await client.select("INBOX")
        assert selected.result == "OK"
        assert select_uidvalidity(selected) == await imap_server.uidvalidity()
        assert select_exists(selected) == 1

        fetched = await client.uid("fetch", "1:*", "(UID BODY.PEEK[])")
        assert fetched.result == "OK", fetched
        assert parse_uid_fetch(fetched) == {uid: (raw, set())}

    (stored,) = await imap_server.messages()
    assert stored.uid == uid
    assert stored.raw == raw
    assert "\\Seen" not in stored.flags


async def test_imap_fetch_without_peek_sets_seen(imap_server: FakeImapServer) -> None:
    # The contrast to the PEEK test: proves the \Seen check above can fail.
    uid = await imap_server.deliver(mm.plain_text_message())
    async with imap_client(imap_server) as client:
        await client.select("INBOX")
        fetched = await client.uid("fetch", f"{uid}", "(UID BODY[])")
        assert fetched.result == "OK"
    (stored,) = await imap_server.messages()
    assert stored.flags == {"\\Seen"}


async def test_imap_uid_fetch_star_returns_last_message_even_if_older(
    imap_server: FakeImapServer,
) -> None:
    # RFC 3501: "n:*" with n above the highest UID still matches the highest
    # message, so pollers must filter uid > watermark themselves.
    last = await imap_server.deliver(mm.plain_text_message())
    async with imap_client(imap_server) as client:
        await client.select("INBOX")
        fetched = await client.uid("fetch", f"{last + 1}:*", "(UID BODY.PEEK[])")
        assert fetched.result == "OK"
        assert set(parse_uid_fetch(fetched)) == {last}


async def test_imap_idle_wakes_when_a_message_is_delivered(imap_server: FakeImapServer) -> None:
    async with imap_client(imap_server) as client:
        await client.select("INBOX")
        idle = await asyncio.wait_for(client.idle_start(timeout=60), CLIENT_TIMEOUT)
        loop = asyncio.get_running_loop()
        started = loop.time()

        await imap_server.deliver(mm.plain_text_message(subject="Wake up"))
        push = await client.wait_server_push(timeout=2.0)
        assert loop.time() - started < 2.0
        # A list of untagged lines with the "* " stripped, e.g.
        # [b'1 EXISTS', b'1 RECENT', b'1 FETCH (FLAGS (\\Recent))'].
        assert isinstance(push, list)
        assert b"1 EXISTS" in push

        client.idle_done()
        done = await asyncio.wait_for(idle, CLIENT_TIMEOUT)
        assert done.result == "OK"

        fetched = await client.uid("fetch", "1:*", "(UID BODY.PEEK[])")
        (raw, _flags) = next(iter(parse_uid_fetch(fetched).values()))
        assert mm.parse(raw)["Subject"] == "Wake up"


async def test_imap_wrong_password_is_refused(imap_server: FakeImapServer) -> None:
    client = IMAP4(host=imap_server.host, port=imap_server.port, timeout=CLIENT_TIMEOUT)
    await client.wait_hello_from_server()
    response = await client.login(imap_server.user, "not-the-password")
    assert response.result == "NO"
    await client.logout()


async def test_imap_change_uidvalidity_keeps_messages_and_renumbers(
    imap_server: FakeImapServer,
) -> None:
    gone = await imap_server.deliver(mm.plain_text_message(message_id="<gone@example.org>"))
    kept = mm.plain_text_message(message_id="<kept@example.org>")
    assert await imap_server.deliver(kept) == gone + 1
    await imap_server.expunge(gone)
    before = await imap_server.uidvalidity()

    after = await imap_server.change_uidvalidity()

    assert after != before
    assert after == await imap_server.uidvalidity()
    # The surviving message is renumbered: it now has the UID the expunged
    # one had, which is why (UIDVALIDITY, UID) together are the identity.
    (stored,) = await imap_server.messages()
    assert (stored.uid, stored.raw) == (gone, kept)
    async with imap_client(imap_server) as client:
        selected = await client.select("INBOX")
        assert select_uidvalidity(selected) == after
        assert select_exists(selected) == 1


async def test_imap_change_uidvalidity_can_empty_the_mailbox(imap_server: FakeImapServer) -> None:
    await imap_server.create_mailbox("Archive")
    await imap_server.deliver(mm.plain_text_message(), "Archive")
    before = await imap_server.uidvalidity("Archive")
    assert await imap_server.change_uidvalidity("Archive", keep_messages=False) != before
    assert await imap_server.messages("Archive") == []
    assert sorted(await imap_server.list_mailboxes()) == ["Archive", "INBOX"]


async def test_imap_drop_connections_reaches_conn_lost_cb(imap_server: FakeImapServer) -> None:
    lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def on_lost(exc: Exception | None) -> None:
        if not lost.done():
            lost.set_result(exc)

    async with imap_client(imap_server, conn_lost_cb=on_lost) as client:
        await client.select("INBOX")
        assert imap_server.connection_count == 1
        assert await imap_server.drop_connections() == 1
        await asyncio.wait_for(lost, 2.0)
    # The listener survives: a new client gets in.
    async with imap_client(imap_server) as client:
        assert (await client.select("INBOX")).result == "OK"


async def test_imap_implicit_tls() -> None:
    async with start_imap_server(tls=True) as server:
        await server.deliver(mm.plain_text_message(subject="Over TLS"))
        async with imap_client(server) as client:
            assert client.protocol.transport.get_extra_info("ssl_object") is not None
            await client.select("INBOX")
            fetched = await client.uid("fetch", "1:*", "(UID BODY.PEEK[])")
            (raw, _flags) = next(iter(parse_uid_fetch(fetched).values()))
            assert mm.parse(raw)["Subject"] == "Over TLS"


BUILDERS: dict[str, Callable[[], bytes]] = {
    "plain": mm.plain_text_message,
    "alternative": mm.alternative_message,
    "html_only": mm.html_only_message,
    "latin1": mm.charset_message,
    "mislabelled": mm.mislabelled_charset_message,
    "encoded_words": mm.encoded_words_message,
    "attachment": mm.attachment_message,
    "wrong_boundary": lambda: mm.malformed_message("wrong_boundary"),
    "unterminated": lambda: mm.malformed_message("unterminated_multipart"),
    "no_boundary": lambda: mm.malformed_message("no_boundary"),
    "bad_headers": lambda: mm.malformed_message("bad_headers"),
    "bad_base64": lambda: mm.malformed_message("bad_base64"),
    "auto_reply": mm.auto_reply_message,
    "list": mm.list_message,
    "bounce": mm.bounce_message,
}


async def test_imap_carries_every_built_message_byte_for_byte(
    imap_server: FakeImapServer,
) -> None:
    sent = {await imap_server.deliver(raw): raw for raw in (b() for b in BUILDERS.values())}
    assert {m.uid: m.raw for m in await imap_server.messages()} == sent
    async with imap_client(imap_server) as client:
        await client.select("INBOX")
        fetched = parse_uid_fetch(await client.uid("fetch", "1:*", "(UID BODY.PEEK[])"))
    assert {uid: raw for uid, (raw, _flags) in fetched.items()} == sent


# --------------------------------------------------------------------------
# SMTP: aiosmtplib against aiosmtpd
# --------------------------------------------------------------------------


async def _send(server: FakeSmtpServer, raw: bytes, **kwargs: object) -> None:
    await aiosmtplib.send(
        raw,
        sender="bot@example.org",
        recipients=["alice@example.org"],
        hostname=server.host,
        port=server.port,
        timeout=CLIENT_TIMEOUT,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_smtp_plaintext_records_envelope(smtp_server: FakeSmtpServer) -> None:
    raw = mm.plain_text_message("Hi\n.leading dot survives\n", subject="Plain SMTP")
    await _send(smtp_server, raw, start_tls=False)

    (got,) = await smtp_server.wait_for_messages(1)
    assert got.mail_from == "bot@example.org"
    assert got.rcpt_tos == ("alice@example.org",)
    assert got.raw == raw
    assert got.message["Subject"] == "Plain SMTP"
    assert got.tls is False
    assert got.auth_user is None


@pytest.mark.parametrize("smtp_server", [SmtpMode.STARTTLS], indirect=True)
async def test_smtp_starttls_with_trusted_self_signed_cert(smtp_server: FakeSmtpServer) -> None:
    await _send(
        smtp_server,
        mm.plain_text_message(),
        start_tls=True,
        tls_context=smtp_server.client_ssl_context(),
    )
    (got,) = await smtp_server.wait_for_messages(1)
    assert got.tls is True


@pytest.mark.parametrize("smtp_server", [SmtpMode.STARTTLS], indirect=True)
async def test_smtp_starttls_needs_trust_or_validate_certs_false(
    smtp_server: FakeSmtpServer,
) -> None:
    # Default verification rejects the self-signed certificate...
    # (aiosmtplib lets the ssl error through unwrapped during STARTTLS.)
    with pytest.raises(ssl.SSLCertVerificationError):
        await _send(smtp_server, mm.plain_text_message(), start_tls=True)
    # ...validate_certs=False accepts it.
    await _send(smtp_server, mm.plain_text_message(), start_tls=True, validate_certs=False)
    (got,) = await smtp_server.wait_for_messages(1)
    assert got.tls is True


@pytest.mark.parametrize("smtp_server", [SmtpMode.STARTTLS], indirect=True)
async def test_smtp_starttls_server_refuses_plaintext_mail(smtp_server: FakeSmtpServer) -> None:
    # require_starttls (the default) makes a recorded message proof of TLS.
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await _send(smtp_server, mm.plain_text_message(), start_tls=False)
    assert refused.value.code == 530
    assert smtp_server.messages == []


@pytest.mark.parametrize("smtp_server", [SmtpMode.SMTPS], indirect=True)
async def test_smtp_implicit_tls(smtp_server: FakeSmtpServer) -> None:
    await _send(
        smtp_server,
        mm.plain_text_message(),
        use_tls=True,
        tls_context=smtp_server.client_ssl_context(),
    )
    (got,) = await smtp_server.wait_for_messages(1)
    assert got.tls is True


async def test_smtp_start_tls_true_refuses_server_without_starttls(
    smtp_server: FakeSmtpServer,
) -> None:
    assert smtp_server.mode is SmtpMode.PLAIN
    with pytest.raises(aiosmtplib.SMTPException, match="STARTTLS extension not supported"):
        await _send(smtp_server, mm.plain_text_message(), start_tls=True)
    # Nothing went out in plaintext.
    with pytest.raises(TimeoutError):
        await smtp_server.wait_for_messages(1, timeout=0.2)
    assert smtp_server.messages == []


async def test_smtp_default_start_tls_none_silently_sends_plaintext(
    smtp_server: FakeSmtpServer,
) -> None:
    # Why the adapter must set start_tls=True or use_tls=True explicitly.
    await _send(smtp_server, mm.plain_text_message())
    (got,) = await smtp_server.wait_for_messages(1)
    assert got.tls is False


@pytest.mark.parametrize(
    "smtp_server",
    [{"mode": SmtpMode.STARTTLS, "username": SMTP_USER, "password": SMTP_PASSWORD}],
    indirect=True,
)
async def test_smtp_auth_after_starttls(smtp_server: FakeSmtpServer) -> None:
    tls = smtp_server.client_ssl_context()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await _send(
            smtp_server,
            mm.plain_text_message(),
            start_tls=True,
            tls_context=tls,
            username=SMTP_USER,
            password="wrong",
        )
    # AUTH is required: no credentials, no mail.
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await _send(smtp_server, mm.plain_text_message(), start_tls=True, tls_context=tls)
    await _send(
        smtp_server,
        mm.plain_text_message(),
        start_tls=True,
        tls_context=tls,
        username=SMTP_USER,
        password=SMTP_PASSWORD,
    )
    (got,) = await smtp_server.wait_for_messages(1)
    assert got.auth_user == SMTP_USER
    assert got.tls is True


async def test_smtp_auth_over_implicit_tls() -> None:
    async with start_smtp_server(SmtpMode.SMTPS, username=SMTP_USER, password=SMTP_PASSWORD) as server:
        await _send(
            server,
            mm.plain_text_message(),
            use_tls=True,
            tls_context=server.client_ssl_context(),
            username=SMTP_USER,
            password=SMTP_PASSWORD,
        )
        (got,) = await server.wait_for_messages(1)
        assert (got.auth_user, got.tls) == (SMTP_USER, True)


async def test_smtp_wait_for_several_and_rejected_recipient(smtp_server: FakeSmtpServer) -> None:
    smtp_server.reject_recipients.add("ghost@example.org")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await aiosmtplib.send(
            mm.plain_text_message(),
            sender="bot@example.org",
            recipients=["ghost@example.org"],
            hostname=smtp_server.host,
            port=smtp_server.port,
            start_tls=False,
            timeout=CLIENT_TIMEOUT,
        )

    async def send_later(n: int) -> None:
        await asyncio.sleep(0.05 * n)
        await _send(smtp_server, mm.plain_text_message(subject=f"#{n}"), start_tls=False)

    senders = [asyncio.create_task(send_later(n)) for n in range(3)]
    got = await smtp_server.wait_for_messages(3, timeout=5.0)
    await asyncio.gather(*senders)
    assert sorted(str(m.message["Subject"]) for m in got) == ["#0", "#1", "#2"]


async def test_smtp_null_sender_is_recorded(smtp_server: FakeSmtpServer) -> None:
    # aiosmtplib.send() refuses sender="" for raw messages ("Sender must be
    # provided"); the lower-level sendmail() sends MAIL FROM:<> fine.
    async with aiosmtplib.SMTP(
        hostname=smtp_server.host, port=smtp_server.port, start_tls=False, timeout=CLIENT_TIMEOUT
    ) as client:
        await client.sendmail("", ["bot@example.org"], mm.bounce_message())
    (got,) = await smtp_server.wait_for_messages(1)
    assert got.mail_from == ""
    assert got.message.get_content_type() == "multipart/report"


# --------------------------------------------------------------------------
# Message builders
# --------------------------------------------------------------------------


def test_builders_control_threading_headers() -> None:
    parent = mm.plain_text_message(subject="Question", references="<root@example.org>")
    options = mm.reply_headers(parent)
    options["message_id"] = "<mine@example.org>"
    reply = mm.plain_text_message(**options)
    p, r = mm.parse(parent), mm.parse(reply)
    assert r["Message-ID"] == "<mine@example.org>"
    assert r["In-Reply-To"] == p["Message-ID"]
    assert str(r["References"]).split() == ["<root@example.org>", str(p["Message-ID"])]
    assert r["Subject"] == "Re: Question"
    # Re: is not stacked.
    assert mm.reply_headers(reply)["subject"] == "Re: Question"
    assert "Message-ID" not in mm.parse(mm.plain_text_message(message_id=None))


def test_builders_produce_the_advertised_shapes() -> None:
    alt = mm.parse(mm.alternative_message())
    assert alt.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alt.iter_parts()] == ["text/plain", "text/html"]

    html = mm.parse(mm.html_only_message())
    assert html.get_content_type() == "text/html"
    assert html.get_body(("plain",)) is None

    latin1 = mm.charset_message()
    assert "Grüße".encode("latin-1") in latin1
    assert mm.parse(latin1).get_content().startswith("Grüße aus Köln")

    mislabelled = mm.parse(mm.mislabelled_charset_message())
    assert mislabelled.get_content_charset() == "utf-8"
    assert "\ufffd" in mislabelled.get_content()  # decoded with replacement

    raw_ew = mm.encoded_words_message()
    assert b"From: =?ISO-8859-1?Q?J=FCrgen_M=FCller?= <juergen@example.org>" in raw_ew
    assert b"Subject: =?UTF-8?B?" in raw_ew
    ew = mm.parse(raw_ew)
    assert ew["Subject"] == "Grüße aus Köln: Überraschung für dich ✓"
    assert ew["From"].addresses[0].display_name == "Jürgen Müller"

    (attachment,) = mm.parse(mm.attachment_message(filename="Bericht über.pdf")).iter_attachments()
    assert attachment.get_filename() == "Bericht über.pdf"
    assert attachment.get_content().startswith(b"%PDF")

    auto = mm.parse(mm.auto_reply_message())
    assert auto["Auto-Submitted"] == "auto-replied"

    lst = mm.parse(mm.list_message())
    assert lst["List-Id"] == "Developers <dev.lists.example.org>"
    assert lst["Precedence"] == "list"

    bounce = mm.parse(mm.bounce_message(in_reply_to="<orig@example.org>"))
    assert bounce["Return-Path"] == "<>"
    assert bounce["From"].addresses[0].username == "MAILER-DAEMON"
    assert bounce.get_content_type() == "multipart/report"
    assert bounce.get_param("report-type") == "delivery-status"
    assert bounce["In-Reply-To"] == "<orig@example.org>"
    assert [p.get_content_type() for p in bounce.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]


@pytest.mark.parametrize("kind", ["wrong_boundary", "unterminated_multipart", "no_boundary", "bad_headers"])
def test_malformed_messages_parse_with_defects(kind: mm.MalformedKind) -> None:
    msg = mm.parse(mm.malformed_message(kind, message_id="<broken@example.org>"))
    assert msg.defects, kind
    assert msg["Message-ID"] == "<broken@example.org>"


def test_malformed_bad_base64_flags_the_part() -> None:
    msg = mm.parse(mm.malformed_message("bad_base64"))
    (attachment,) = msg.iter_attachments()
    attachment.get_content()  # decoding registers the defect on the part
    assert attachment.defects
