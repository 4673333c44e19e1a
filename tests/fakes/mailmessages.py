"""Raw RFC 5322 messages for email tests.

Every builder returns ``bytes`` with CRLF line ends, ready for
``FakeImapServer.deliver()`` or an SMTP ``DATA``. They are written out by hand
rather than through :class:`email.message.EmailMessage`, because several cases
(encoded-words, wrong charset labels, broken MIME) must be byte-exact and
``EmailMessage`` would "fix" them on serialisation.

Common header options (all keyword-only, see :class:`HeaderOptions`) let each
test control threading: ``message_id`` (generated unless given; ``None``
omits the header), ``in_reply_to``, ``references``, plus ``from_``, ``to``,
``subject``, ``date``, ``return_path`` and free ``extra_headers``.
Non-ASCII ``subject`` or ``from_`` display names are RFC 2047-encoded
automatically; already-encoded ASCII values are passed through untouched.

Parse results with ``email.message_from_bytes(raw, policy=email.policy.default)``
(see :func:`parse`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email
import email.policy
import email.utils
import uuid
from collections.abc import Sequence
from email.header import Header
from email.message import EmailMessage
from typing import Literal, TypedDict, Unpack, cast

__all__ = [
    "BOT_ADDRESS",
    "SENDER_ADDRESS",
    "HeaderOptions",
    "MalformedKind",
    "alternative_message",
    "attachment_message",
    "auto_reply_message",
    "bounce_message",
    "charset_message",
    "encoded_words_message",
    "html_only_message",
    "list_message",
    "make_message_id",
    "malformed_message",
    "mislabelled_charset_message",
    "parse",
    "plain_text_message",
    "reply_headers",
]

CRLF = b"\r\n"
SENDER_ADDRESS = "Alice Example <alice@example.org>"
BOT_ADDRESS = "Soulgate Bot <bot@example.org>"

TransferEncoding = Literal["7bit", "8bit", "quoted-printable", "base64"]


class HeaderOptions(TypedDict, total=False):
    """Header options shared by every builder."""

    from_: str
    to: str
    cc: str
    reply_to: str
    subject: str
    #: Absent: a fresh ``<uuid@example.org>``. ``None``: no Message-ID at all.
    message_id: str | None
    in_reply_to: str | None
    #: One id string (may already hold several) or a sequence of ids.
    references: str | Sequence[str] | None
    #: A datetime (formatted per RFC 5322) or a raw string (may be invalid).
    date: dt.datetime | str
    #: Written first, as the final MTA would: ``"<>"`` marks a null sender.
    return_path: str | None
    #: Appended verbatim after the standard headers (values must be ASCII).
    extra_headers: Sequence[tuple[str, str]]


def parse(raw: bytes) -> EmailMessage:
    """Parse the way the gateway must (policy.default keeps defects)."""
    return cast(EmailMessage, email.message_from_bytes(raw, policy=email.policy.default))


def make_message_id(domain: str = "example.org") -> str:
    """A unique ``<...@domain>``; never calls getfqdn() like make_msgid() may."""
    return f"<{uuid.uuid4().hex}@{domain}>"


def reply_headers(parent: bytes | EmailMessage) -> HeaderOptions:
    """Headers for a reply to *parent*: ``Re:`` subject (not stacked),
    ``In-Reply-To`` and ``References`` extended with the parent's id."""
    msg = parse(parent) if isinstance(parent, bytes) else parent
    parent_id = str(msg.get("Message-ID", "")).strip()
    refs = str(msg.get("References", "")).split()
    if not refs and msg.get("In-Reply-To"):
        refs = str(msg["In-Reply-To"]).split()
    subject = str(msg.get("Subject", ""))
    if not subject.lower().startswith("re:"):
        subject = f"Re: {subject}"
    return {
        "subject": subject,
        "in_reply_to": parent_id or None,
        "references": [*refs, parent_id] if parent_id else refs or None,
    }


# --------------------------------------------------------------------------
# Low-level assembly
# --------------------------------------------------------------------------


def _to_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def _encode_body(data: bytes, cte: TransferEncoding) -> bytes:
    if cte == "base64":
        return _to_crlf(base64.encodebytes(data))
    if cte == "quoted-printable":
        # Normalise to LF first: b2a_qp keeps the input's line-end style and
        # would otherwise encode a bare CR as =0D.
        lf = data.replace(b"\r\n", b"\n")
        return _to_crlf(binascii.b2a_qp(lf, istext=True))
    return _to_crlf(data)


def _default_cte(data: bytes) -> TransferEncoding:
    return "7bit" if data.isascii() else "quoted-printable"


def _encode_phrase_header(value: str) -> str:
    """RFC 2047-encode a non-ASCII unstructured value (Subject)."""
    if value.isascii():
        return value
    return Header(value, "utf-8").encode()


def _encode_address_header(value: str) -> str:
    """Encode the display names of an address list; ASCII passes through."""
    if value.isascii():
        return value
    pairs = email.utils.getaddresses([value])
    return ", ".join(email.utils.formataddr(p, charset="utf-8") for p in pairs)


def _header_lines(
    opts: HeaderOptions,
    *,
    default_subject: str,
    content_headers: Sequence[tuple[str, str]],
) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    return_path = opts.get("return_path")
    if return_path is not None:
        headers.append(("Return-Path", return_path))
    headers.append(("From", _encode_address_header(opts.get("from_", SENDER_ADDRESS))))
    headers.append(("To", _encode_address_header(opts.get("to", BOT_ADDRESS))))
    if "cc" in opts:
        headers.append(("Cc", _encode_address_header(opts["cc"])))
    if "reply_to" in opts:
        headers.append(("Reply-To", _encode_address_header(opts["reply_to"])))
    headers.append(("Subject", _encode_phrase_header(opts.get("subject", default_subject))))
    date = opts.get("date")
    if date is None:
        date = dt.datetime.now(dt.UTC)
    headers.append(("Date", date if isinstance(date, str) else email.utils.format_datetime(date)))
    if "message_id" in opts:
        if opts["message_id"] is not None:
            headers.append(("Message-ID", opts["message_id"]))
    else:
        headers.append(("Message-ID", make_message_id()))
    if opts.get("in_reply_to"):
        headers.append(("In-Reply-To", str(opts["in_reply_to"])))
    refs = opts.get("references")
    if refs:
        headers.append(("References", refs if isinstance(refs, str) else " ".join(refs)))
    headers.append(("MIME-Version", "1.0"))
    headers.extend(content_headers)
    headers.extend(opts.get("extra_headers", ()))
    return headers


def _assemble(headers: Sequence[tuple[str, str | bytes]], body: bytes) -> bytes:
    out = bytearray()
    for name, value in headers:
        raw_value = value if isinstance(value, bytes) else value.encode("ascii")
        out += name.encode("ascii") + b": " + raw_value + CRLF
    out += CRLF
    out += body
    if not body.endswith(CRLF):
        out += CRLF
    return bytes(out)


def _part(content_headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """A MIME body part: its headers, a blank line, its (encoded) body."""
    head = b"".join(f"{n}: {v}".encode("ascii") + CRLF for n, v in content_headers)
    return head + CRLF + body


def _text_part(
    text: str,
    subtype: str,
    *,
    charset: str = "utf-8",
    cte: TransferEncoding | None = None,
) -> tuple[list[tuple[str, str]], bytes]:
    data = text.encode(charset)
    cte = cte or _default_cte(data)
    return (
        [
            ("Content-Type", f'text/{subtype}; charset="{charset}"'),
            ("Content-Transfer-Encoding", cte),
        ],
        _encode_body(data, cte),
    )


def _boundary() -> str:
    # "=_" cannot occur in quoted-printable or base64 output, so the boundary
    # can never collide with encoded content.
    return f"=_soulgate_{uuid.uuid4().hex}"


def _multipart(subtype: str, parts: Sequence[bytes], *, params: str = "") -> tuple[str, bytes]:
    boundary = _boundary()
    body = bytearray(b"This is a multi-part message in MIME format.\r\n")
    for part in parts:
        body += f"--{boundary}".encode("ascii") + CRLF + part
        if not part.endswith(CRLF):
            body += CRLF
    body += f"--{boundary}--".encode("ascii") + CRLF
    ctype = f'multipart/{subtype}; boundary="{boundary}"{params}'
    return ctype, bytes(body)


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------


def plain_text_message(
    body: str = "Hello from a test.\n",
    *,
    charset: str = "utf-8",
    transfer_encoding: TransferEncoding | None = None,
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """A single text/plain part (quoted-printable if non-ASCII, by default)."""
    content_headers, encoded = _text_part(body, "plain", charset=charset, cte=transfer_encoding)
    return _assemble(
        _header_lines(headers, default_subject="Plain text", content_headers=content_headers),
        encoded,
    )


def alternative_message(
    text: str = "Hello in *plain* text.\n",
    html: str = "<html><body><p>Hello in <b>HTML</b>.</p></body></html>\n",
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """multipart/alternative: text/plain then text/html (the usual MUA order)."""
    parts = [_part(*_text_part(text, "plain")), _part(*_text_part(html, "html"))]
    ctype, body = _multipart("alternative", parts)
    return _assemble(
        _header_lines(headers, default_subject="Alternative", content_headers=[("Content-Type", ctype)]),
        body,
    )


def html_only_message(
    html: str = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<p>Only <i>HTML</i> here &amp; no text part.</p><br>"
        '<a href="https://example.org/x">a link</a></body></html>\n'
    ),
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """A lone text/html part: no text/plain alternative to fall back on."""
    content_headers, encoded = _text_part(html, "html")
    return _assemble(
        _header_lines(headers, default_subject="HTML only", content_headers=content_headers),
        encoded,
    )


def charset_message(
    body: str = "Grüße aus Köln, Straße 5. Ça va?\n",
    *,
    charset: str = "iso-8859-1",
    declared_charset: str | None = None,
    transfer_encoding: TransferEncoding = "8bit",
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """text/plain whose bytes are *body* encoded in *charset*.

    The Content-Type label is *declared_charset* (default: the true one).
    ``8bit`` by default, so raw non-UTF-8 bytes reach the parser.
    """
    data = body.encode(charset)
    label = declared_charset or charset
    content_headers = [
        ("Content-Type", f'text/plain; charset="{label}"'),
        ("Content-Transfer-Encoding", transfer_encoding),
    ]
    return _assemble(
        _header_lines(headers, default_subject=f"Charset {label}", content_headers=content_headers),
        _encode_body(data, transfer_encoding),
    )


def mislabelled_charset_message(
    body: str = "Grüße aus Köln, Straße 5. Ça va?\n",
    *,
    actual: str = "iso-8859-1",
    declared: str = "utf-8",
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """Latin-1 bytes labelled UTF-8 (by default): strict decoding fails, a
    parser must fall back to replacement characters. Use e.g.
    ``declared="x-no-such-charset"`` for an unknown label instead."""
    return charset_message(
        body, charset=actual, declared_charset=declared, transfer_encoding="8bit", **headers
    )


def _encoded_words(text: str, charset: str, encoding: Literal["B", "Q"]) -> str:
    """RFC 2047 encoded-words for *text*, each at most 75 characters and
    folded onto continuation lines, never splitting a character."""
    words: list[str] = []
    chunk = ""
    for ch in text:
        candidate = chunk + ch
        if len(_one_word(candidate, charset, encoding)) > 75 and chunk:
            words.append(_one_word(chunk, charset, encoding))
            chunk = ch
        else:
            chunk = candidate
    if chunk:
        words.append(_one_word(chunk, charset, encoding))
    # Whitespace between adjacent encoded-words is dropped by decoders
    # (RFC 2047 section 6.2), so folding here does not add spaces.
    return "\r\n ".join(words)


def _one_word(text: str, charset: str, encoding: Literal["B", "Q"]) -> str:
    data = text.encode(charset)
    if encoding == "B":
        payload = base64.b64encode(data).decode("ascii")
    else:
        payload = "".join(
            "_"
            if b == 0x20
            else chr(b)
            if (0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A)
            else f"={b:02X}"
            for b in data
        )
    return f"=?{charset.upper()}?{encoding}?{payload}?="


def encoded_words_message(
    body: str = "The headers of this message are RFC 2047 encoded.\n",
    *,
    subject_text: str = "Grüße aus Köln: Überraschung für dich ✓",
    subject_charset: str = "utf-8",
    subject_encoding: Literal["B", "Q"] = "B",
    from_name: str = "Jürgen Müller",
    from_addr: str = "juergen@example.org",
    from_charset: str = "iso-8859-1",
    from_encoding: Literal["B", "Q"] = "Q",
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """Subject (*subject_text*) and From display name as hand-made RFC 2047
    encoded-words.

    Defaults mix both styles: a UTF-8 ``B`` subject and an ISO-8859-1 ``Q``
    name, i.e. ``=?ISO-8859-1?Q?J=FCrgen_M=FCller?= <juergen@example.org>``.
    A ``subject``/``from_`` header option is overridden by these.
    """
    opts = headers.copy()
    opts["subject"] = _encoded_words(subject_text, subject_charset, subject_encoding)
    opts["from_"] = f"{_encoded_words(from_name, from_charset, from_encoding)} <{from_addr}>"
    content_headers, encoded = _text_part(body, "plain")
    return _assemble(_header_lines(opts, default_subject="", content_headers=content_headers), encoded)


def attachment_message(
    text: str = "Please find the report attached.\n",
    *,
    filename: str = "report.pdf",
    content: bytes = b"%PDF-1.4\n% fake test document\n%%EOF\n",
    content_type: str = "application/pdf",
    inline: bool = False,
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """multipart/mixed: a text part plus one base64 attachment.

    A non-ASCII *filename* is written as RFC 2231 ``filename*=utf-8''...``.
    """
    if filename.isascii():
        name_param = f'filename="{filename}"'
        ctype_name = f'; name="{filename}"'
    else:
        quoted = email.utils.encode_rfc2231(filename, "utf-8")
        name_param = f"filename*={quoted}"
        ctype_name = f"; name*={quoted}"
    disposition = "inline" if inline else "attachment"
    attachment = _part(
        [
            ("Content-Type", f"{content_type}{ctype_name}"),
            ("Content-Disposition", f"{disposition}; {name_param}"),
            ("Content-Transfer-Encoding", "base64"),
        ],
        _encode_body(content, "base64"),
    )
    ctype, body = _multipart("mixed", [_part(*_text_part(text, "plain")), attachment])
    return _assemble(
        _header_lines(headers, default_subject="With attachment", content_headers=[("Content-Type", ctype)]),
        body,
    )


MalformedKind = Literal[
    "wrong_boundary",
    "unterminated_multipart",
    "no_boundary",
    "bad_headers",
    "bad_base64",
]


def malformed_message(kind: MalformedKind = "wrong_boundary", **headers: Unpack[HeaderOptions]) -> bytes:
    """Broken on purpose; every kind still parses with policy.default but
    leaves ``.defects``:

    * ``wrong_boundary``: multipart whose declared boundary never occurs.
    * ``unterminated_multipart``: the closing ``--boundary--`` is missing.
    * ``no_boundary``: ``multipart/mixed`` without a boundary parameter.
    * ``bad_headers``: an unparsable Date, raw 8-bit (Latin-1) bytes in a
      header, an address with no domain and, closing the header block, a line
      without a colon.
    * ``bad_base64``: an attachment whose base64 is corrupt and mis-padded.
    """
    text_part = _part(*_text_part("Readable text before the breakage.\n", "plain"))
    if kind == "wrong_boundary":
        ctype = 'multipart/mixed; boundary="declared-boundary"'
        body = b"--actual-boundary\r\n" + text_part + b"--actual-boundary--\r\n"
    elif kind == "unterminated_multipart":
        ctype = 'multipart/mixed; boundary="b1"'
        body = b"--b1\r\n" + text_part + b"--b1\r\nContent-Type: text/plain\r\n\r\ncut off here"
    elif kind == "no_boundary":
        ctype = "multipart/mixed"
        body = b"--x\r\n" + text_part + b"--x--\r\n"
    elif kind == "bad_headers":
        lines: list[tuple[str, str | bytes]] = [
            (name, value)
            for name, value in _header_lines(
                {**headers, "date": headers.get("date", "Someday, 99 Foo 20x6 25:61:00 +9999")},
                default_subject="Bad headers",
                content_headers=[("Content-Type", 'text/plain; charset="utf-8"')],
            )
        ]
        lines.append(("X-Raw-8bit", "Grüße ohne Kodierung".encode("latin-1")))
        lines.append(("Cc", "undisclosed-recipients-without-domain"))
        raw = _assemble(lines, b"Body after broken headers.\r\n")
        # A line with no colon as the last header line: RFC 5322 has no place
        # for it. The stdlib parser ends the header block there (the line
        # becomes body text, MissingHeaderBodySeparatorDefect); placed any
        # earlier it would swallow From/Subject/Message-ID too.
        return raw.replace(CRLF + CRLF, CRLF + b"This line has no colon" + CRLF + CRLF, 1)
    elif kind == "bad_base64":
        attachment = _part(
            [
                ("Content-Type", 'application/octet-stream; name="data.bin"'),
                ("Content-Disposition", 'attachment; filename="data.bin"'),
                ("Content-Transfer-Encoding", "base64"),
            ],
            b"SGVsbG8gd29ybGQ*!!\r\nnot=base64=at=all\r\nQUJD=\r\n",
        )
        ctype, body = _multipart("mixed", [text_part, attachment])
    else:  # pragma: no cover - guarded by the Literal type
        raise ValueError(f"unknown malformation {kind!r}")
    return _assemble(
        _header_lines(
            headers, default_subject=f"Malformed: {kind}", content_headers=[("Content-Type", ctype)]
        ),
        body,
    )


def auto_reply_message(
    body: str = "I am out of the office until Monday.\n",
    *,
    auto_submitted: str = "auto-replied",
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """An out-of-office style auto-reply (RFC 3834 ``Auto-Submitted``)."""
    opts: HeaderOptions = {"subject": "Automatic reply: Out of office", **headers}
    opts["extra_headers"] = [("Auto-Submitted", auto_submitted), *headers.get("extra_headers", ())]
    return plain_text_message(body, **opts)


def list_message(
    body: str = "A post to the mailing list.\n",
    *,
    list_id: str = "Developers <dev.lists.example.org>",
    precedence: str | None = "list",
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """Mailing-list traffic: ``List-Id``, ``List-Unsubscribe``, ``List-Post``,
    ``Precedence: list`` (pass ``precedence="bulk"``/``None`` to vary)."""
    list_extra: list[tuple[str, str]] = [
        ("List-Id", list_id),
        ("List-Unsubscribe", "<mailto:dev-unsubscribe@lists.example.org>"),
        ("List-Post", "<mailto:dev@lists.example.org>"),
        ("Sender", "dev-bounces@lists.example.org"),
    ]
    if precedence is not None:
        list_extra.append(("Precedence", precedence))
    opts: HeaderOptions = {
        "subject": "[dev] Weekly sync notes",
        "to": "Developers <dev@lists.example.org>",
        "return_path": "<dev-bounces@lists.example.org>",
        **headers,
    }
    opts["extra_headers"] = [*list_extra, *headers.get("extra_headers", ())]
    return plain_text_message(body, **opts)


def bounce_message(
    *,
    original: bytes | None = None,
    failed_recipient: str = "nobody@example.net",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <nobody@example.net>: Recipient address rejected",
    reporting_mta: str = "mx.example.org",
    auto_submitted: str | None = "auto-replied",
    **headers: Unpack[HeaderOptions],
) -> bytes:
    """A delivery status notification (RFC 3464) from MAILER-DAEMON.

    ``Return-Path: <>`` marks the null envelope sender, as the delivering
    MTA writes it. The report is ``multipart/report;
    report-type=delivery-status`` with a human-readable part, a
    ``message/delivery-status`` part and the *original* as
    ``message/rfc822`` (a default one if not given). Set *auto_submitted*
    to None to drop that header and test the null-sender rule alone.
    """
    if original is None:
        original = plain_text_message(
            "The message that could not be delivered.\n",
            from_=BOT_ADDRESS,
            to=failed_recipient,
            subject="Re: your question",
        )
    human = _part(
        *_text_part(
            "This is the mail system at host "
            f"{reporting_mta}.\n\nI'm sorry to have to inform you that your message "
            "could not be delivered to one or more recipients.\n\n"
            f"<{failed_recipient}>: {diagnostic}\n",
            "plain",
        )
    )
    action = "failed" if status.startswith("5") else "delayed"
    dsn_fields = (
        f"Reporting-MTA: dns; {reporting_mta}\r\n"
        f"Arrival-Date: {email.utils.format_datetime(dt.datetime.now(dt.UTC))}\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {failed_recipient}\r\n"
        f"Original-Recipient: rfc822; {failed_recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n"
    ).encode("ascii")
    dsn = _part([("Content-Type", "message/delivery-status")], dsn_fields)
    returned = _part(
        [("Content-Type", "message/rfc822"), ("Content-Description", "Undelivered Message")],
        _to_crlf(original),
    )
    ctype, body = _multipart("report", [human, dsn, returned], params="; report-type=delivery-status")
    extra: list[tuple[str, str]] = []
    if auto_submitted is not None:
        extra.append(("Auto-Submitted", auto_submitted))
    opts: HeaderOptions = {
        "from_": f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        "to": BOT_ADDRESS,
        "subject": "Undelivered Mail Returned to Sender",
        "return_path": "<>",
        **headers,
    }
    opts["extra_headers"] = [*extra, *headers.get("extra_headers", ())]
    return _assemble(
        _header_lines(opts, default_subject="", content_headers=[("Content-Type", ctype)]),
        body,
    )
