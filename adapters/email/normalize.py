"""A parsed mail → the :class:`gateway.Envelope` the pipeline works on (pure functions)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from gateway import Attachment, Conversation, Envelope, ReplyAddress, Segment, Sender

from .config import EmailConfig
from .mailparse import ParsedMail
from .quoting import split_reply
from .threads import references_for, subject_base

__all__ = ["attachment_key", "external_id", "message_key", "to_envelope"]

QUOTE_LIMIT = 4000  # characters of removed history kept as a quote segment


def external_id(mailbox: str, uidvalidity: int, uid: int) -> str:
    return f"imap:{mailbox}:{uidvalidity}:{uid}"


def message_key(mail: ParsedMail, fallback: str) -> str:
    """A short stable key for a mail (its Message-ID, else its IMAP identity)."""
    return hashlib.sha256((mail.message_id or fallback).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def attachment_key(key: str, index: int) -> str:
    return f"{key}:{index}"


def _text(mail: ParsedMail, config: EmailConfig, starts_thread: bool) -> tuple[str, str]:
    body = mail.text.strip()
    removed = ""
    if config.strip_quotes and body:
        body, removed = split_reply(body)
    subject = subject_base(mail.subject)
    # The subject of a new thread is often half the request ("Refund for order 123").
    # Not for a reply (it only repeats the thread), nor before a /command.
    if starts_thread and subject and not body.startswith("/") and subject.lower() not in body.lower():
        body = f"{subject}\n\n{body}" if body else subject
    return body or subject, removed


def to_envelope(
    mail: ParsedMail, *, account: str, config: EmailConfig, mailbox: str, uidvalidity: int, uid: int,
    conversation: str, source: bytes,
) -> Envelope:
    ext = external_id(mailbox, uidvalidity, uid)
    key = message_key(mail, ext)
    starts_thread = not mail.in_reply_to and not mail.references
    text, removed = _text(mail, config, starts_thread)
    segments: list[Segment] = []
    if removed:
        segments.append(Segment(kind="quote", value=removed[:QUOTE_LIMIT], label="quoted history"))
    for i, att in enumerate(mail.attachments):
        segments.append(Segment(
            kind="attachment", value=att.name, label=att.note,
            attachment=Attachment(name=att.name, mime=att.mime, size=att.size,
                                  ref=attachment_key(key, i) if att.data is not None else None),
        ))
    raw: dict[str, Any] = {
        "mailbox": mailbox, "uidvalidity": uidvalidity, "uid": uid,
        "message_id": mail.message_id, "in_reply_to": mail.in_reply_to, "references": mail.references,
        "subject": mail.subject, "from": mail.from_addr, "reply_to": mail.reply_addr,
        "to": mail.to, "cc": mail.cc, "date": mail.date.isoformat() if mail.date else None,
        "headers": [[n, v[:2000]] for n, v in mail.headers[:200]],
        "text": mail.text,  # the whole body, quotes and signature included
        "text_source": mail.text_source,
        "defects": mail.defects,
        "size": len(source),
    }
    if len(source) <= config.keep_source_bytes:
        raw["source_b64"] = base64.b64encode(source).decode("ascii")
    else:
        raw["source_b64"] = None  # too large to keep here; it stays on the IMAP server
    address = ReplyAddress(channel="email", account=account, data={
        "to": mail.reply_addr, "to_name": mail.reply_name,
        # the parent's chain; RFC 5322 3.6.4: without References, a single In-Reply-To stands in
        "message_id": mail.message_id,
        "references": references_for(mail.references or mail.in_reply_to[:1], None),
        "subject": mail.subject, "conversation": conversation,
    })
    return Envelope(
        channel="email", account=account, external_id=ext,
        alt_ids=(f"mid:{mail.message_id}",) if mail.message_id else (),
        conversation=Conversation(id=conversation, kind="direct", title=subject_base(mail.subject) or None),
        sender=Sender(id=mail.from_addr or mail.reply_addr, display_name=mail.from_name, handle=mail.from_addr),
        text=text, reply_to=address, addressed=True, segments=tuple(segments), raw=raw,
    )
