"""Raw RFC 5322 bytes → :class:`ParsedMail`, tolerating what real mail does to parsers.

``email.policy.default`` records most damage as defects, but some header and
charset trouble still raises (an unknown charset label, an unterminated
``<`` in Message-ID, a broken domain literal). Every access here has a
fallback: a header that will not parse is read raw and decoded leniently, a
body in an unknown or wrong charset is decoded with replacement characters,
and what went wrong is kept in ``defects``. Only a mail without any usable
sender address is refused (:class:`Unreadable`): there is nobody to answer.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message
from typing import Any, cast

from .config import is_address

__all__ = ["MailAttachment", "ParsedMail", "Unreadable", "html_to_text", "parse_mail", "summary"]

_MSGID = re.compile(r"<[^<>\s]+>")
_BARE_ID = re.compile(r"^[^<>\s@]+@[^<>\s@]+$")


class Unreadable(ValueError):
    """The mail cannot be turned into a request (no sender address, not a message at all)."""


@dataclass(frozen=True, slots=True)
class MailAttachment:
    name: str
    mime: str
    size: int
    #: None when the part is over the size cap (listed, not kept) or could not be decoded
    data: bytes | None
    note: str | None = None


@dataclass(slots=True)
class ParsedMail:
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    subject: str
    from_addr: str  # lower-case; "" when there is none
    from_name: str | None
    reply_addr: str  # Reply-To if usable, else From
    reply_name: str | None
    to: list[str]
    cc: list[str]
    date: datetime | None
    text: str  # the whole body as text (text/plain, or converted HTML)
    text_source: str  # "plain" | "html" | "none"
    attachments: list[MailAttachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "text/plain"

    def header(self, name: str) -> str | None:
        """The first header of that name (decoded), or None."""
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]


def html_to_text(html: str) -> str:
    """HTML → readable text with inscriptis (Apache-2.0): block layout, lists, link targets."""
    from inscriptis import get_text  # lxml is loaded only when an HTML mail arrives
    from inscriptis.model.config import ParserConfig

    if not html.strip():
        return ""
    try:
        text = get_text(html, ParserConfig(display_links=True))
    except Exception:  # lxml refuses some garbage; strip tags the crude way instead
        text = re.sub(r"<[^>]*>", " ", html)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _decode_raw_header(value: str) -> str:
    try:
        parts = email.header.decode_header(value)
        out = []
        for chunk, charset in parts:
            if isinstance(chunk, bytes):
                try:
                    out.append(chunk.decode(charset or "ascii", errors="replace"))
                except LookupError:
                    out.append(chunk.decode("utf-8", errors="replace"))
            else:
                out.append(chunk)
        return "".join(out)
    except Exception:
        return value


def _collect_headers(msg: Message, defects: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, raw in msg.raw_items():
        try:
            value = str(msg.policy.header_fetch_parse(name, raw))
        except Exception as exc:
            defects.append(f"header {name}: {type(exc).__name__}")
            value = _decode_raw_header(re.sub(r"\r?\n[ \t]", " ", str(raw)))
        out.append((name, value.strip()))
    return out


def _ids(value: str | None) -> list[str]:
    if not value:
        return []
    found = _MSGID.findall(value)
    if not found and _BARE_ID.match(value.strip()):
        found = [f"<{value.strip()}>"]  # some clients forget the brackets
    return list(dict.fromkeys(found))


def _addresses(value: str | None) -> list[tuple[str, str]]:
    if not value:
        return []
    pairs = email.utils.getaddresses([value])
    return [(name, addr.strip().lower()) for name, addr in pairs if is_address(addr.strip())]


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def _text_of(part: Message, defects: list[str]) -> str:
    """A text part's content; undecodable bytes become U+FFFD, never an exception."""
    try:
        text = str(cast(EmailMessage, part).get_content())
        if "\ufffd" in text:
            defects.append(f"undecodable bytes in {part.get_content_type()} "
                           f"(declared {part.get_content_charset() or 'us-ascii'}) replaced")
        return text
    except (LookupError, UnicodeError) as exc:
        defects.append(f"charset of {part.get_content_type()}: {exc}")
    except Exception as exc:
        defects.append(f"content of {part.get_content_type()}: {type(exc).__name__}: {exc}")
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else str(part.get_payload()).encode("utf-8", "replace")
    return data.decode("utf-8", errors="replace")


def _body(msg: EmailMessage, defects: list[str]) -> tuple[str, str]:
    try:
        plain = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
    except Exception as exc:
        defects.append(f"body structure: {type(exc).__name__}")
        plain = html = None
    if plain is None and html is None and not msg.is_multipart() and msg.get_content_maintype() == "text":
        plain = msg  # e.g. text/enriched or a text part get_body() does not consider a body
    if plain is not None:
        text = _text_of(plain, defects)
        if text.strip() or html is None:
            return text, "plain"
    if html is not None:
        return html_to_text(_text_of(html, defects)), "html"
    if msg.get_content_maintype() == "multipart":
        return _broken_multipart(msg, defects)
    return "", "none"


def _broken_multipart(msg: EmailMessage, defects: list[str]) -> tuple[str, str]:
    """Text from a multipart whose boundary is missing or wrong: the parser left one blob."""
    payload = msg.get_payload()
    if not isinstance(payload, str):
        return "", "none"
    first = next((ln.strip() for ln in payload.splitlines() if ln.strip()), "")
    if first.startswith("--") and len(first) > 2:
        # the boundary the parts really use: parse again with it
        head = f'Content-Type: multipart/mixed; boundary="{first[2:]}"\r\n\r\n'
        again = cast(EmailMessage, email.message_from_string(head + payload, policy=email.policy.default))
        if again.is_multipart() and not any(type(d).__name__ == "StartBoundaryNotFoundDefect"
                                             for d in again.defects):
            defects.append("multipart boundary recovered from the body")
            text, source = _body(again, defects)
            if source != "none":
                return text, source
    return payload, "plain"


def _attachments(msg: EmailMessage, max_bytes: int, max_count: int, defects: list[str]) -> list[MailAttachment]:
    out: list[MailAttachment] = []
    try:
        parts = list(msg.iter_attachments())
    except Exception as exc:
        defects.append(f"attachments: {type(exc).__name__}")
        return out
    for n, part in enumerate(parts):
        mime = part.get_content_type()
        try:
            name = part.get_filename() or f"attachment-{n + 1}"
        except Exception:
            name = f"attachment-{n + 1}"
        raw = part.get_payload(decode=True)
        data = raw if isinstance(raw, bytes) else str(part.get_payload()).encode("utf-8", "replace")
        if part.defects:
            defects.extend(f"attachment {name}: {type(d).__name__}" for d in part.defects)
        if len(out) >= max_count:
            out.append(MailAttachment(name, mime, len(data), None, "over the attachment count cap"))
        elif len(data) > max_bytes:
            out.append(MailAttachment(name, mime, len(data), None, f"over the {max_bytes}-byte cap"))
        else:
            out.append(MailAttachment(name, mime, len(data), data))
    return out


def parse_mail(raw: bytes, *, max_attachment_bytes: int, max_attachments: int) -> ParsedMail:
    """Parse one message; raises :class:`Unreadable` only when nobody could be answered."""
    msg = cast(EmailMessage, email.message_from_bytes(raw, policy=email.policy.default))
    defects: list[str] = [type(d).__name__ for d in msg.defects]
    headers = _collect_headers(msg, defects)

    def first(name: str) -> str | None:
        lname = name.lower()
        return next((v for n, v in headers if n.lower() == lname), None)

    froms = _addresses(first("From"))
    replies = _addresses(first("Reply-To"))
    if not froms and not replies:
        raise Unreadable("no usable sender address (From is missing or unreadable)")
    from_name, from_addr = froms[0] if froms else ("", "")
    reply_name, reply_addr = replies[0] if replies else (from_name, from_addr)
    own = _ids(first("Message-ID"))
    text, source = _body(msg, defects)
    try:
        content_type = msg.get_content_type()
    except Exception:
        content_type = "text/plain"
    return ParsedMail(
        message_id=own[0] if own else None,
        in_reply_to=_ids(first("In-Reply-To")),
        references=_ids(" ".join(v for n, v in headers if n.lower() == "references")),
        subject=re.sub(r"\s+", " ", first("Subject") or "").strip(),
        from_addr=from_addr,
        from_name=from_name or None,
        reply_addr=reply_addr,
        reply_name=reply_name or None,
        to=[a for _n, a in _addresses(", ".join(v for n, v in headers if n.lower() == "to"))],
        cc=[a for _n, a in _addresses(", ".join(v for n, v in headers if n.lower() == "cc"))],
        date=_date(first("Date")),
        text=text.replace("\r\n", "\n"),
        text_source=source,
        attachments=_attachments(msg, max_attachment_bytes, max_attachments, defects),
        defects=list(dict.fromkeys(defects)),
        headers=headers,
        content_type=content_type,
    )


def summary(mail: ParsedMail) -> dict[str, Any]:
    """The identifying bits of a mail for audit rows (never the body)."""
    return {"message_id": mail.message_id, "from": mail.from_addr, "subject": mail.subject[:200]}
