"""Which mail must never be answered: loops, bulk mail, bounces, strangers.

An answering machine that answers answering machines mails forever. RFC 3834
says what an automatic responder must not answer; we follow it and add the
usual real-world markers. Each rule returns a short reason; the caller audits
it and moves on (the mail is not admitted, so no turn and no reply exists).

``From:`` proves nothing: anyone can write any address there. Two optional
defences: an allow-list (useful only together with authentication, or on a
mailbox that only trusted servers deliver to) and ``trusted_authserv_id``,
which accepts a sender only when the Authentication-Results header written
by *our own* receiving server (identified by its authserv-id) shows that
DMARC passed, or that DKIM or SPF passed for the From domain.
"""

from __future__ import annotations

import re

from .config import EmailConfig, domain_of
from .mailparse import ParsedMail

__all__ = ["authenticated", "loop_reason", "sender_reason"]

_NO_REPLY_LOCALS = re.compile(
    r"^(mailer-daemon|postmaster|no[-_.]?reply|do[-_.]?not[-_.]?reply|bounces?|daemon)([-+._].*)?$"
)
_BULK = {"bulk", "list", "junk", "auto_reply"}
_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress")


def loop_reason(mail: ParsedMail, config: EmailConfig, *, ours: bool = False) -> str | None:
    """Why this mail must not be answered (RFC 3834 and friends), or None."""
    own = config.address.lower()
    if ours or mail.from_addr == own:
        return "sent by this mailbox itself"
    if mail.reply_addr == own:
        return "Reply-To is this mailbox itself"
    auto = (mail.header("Auto-Submitted") or "").split(";")[0].strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    precedence = (mail.header("Precedence") or "").strip().lower()
    if precedence in _BULK:
        return f"Precedence: {precedence}"
    listed = sorted({n for n, _v in mail.headers if n.lower().startswith("list-")})
    if listed:
        return f"mailing list ({', '.join(listed)})"
    for name in _AUTO_HEADERS:
        value = (mail.header(name) or "").strip()
        # X-Auto-Response-Suppress asks responders to stay quiet; we are one when it says All/AutoReply
        if value and (name != "X-Auto-Response-Suppress" or re.search(r"\b(all|autoreply)\b", value, re.I)):
            return f"{name}: {value}"
    return_path = mail.header("Return-Path")
    if return_path is not None and return_path.strip() in ("<>", ""):
        return "null sender (Return-Path: <>)"
    if mail.content_type == "multipart/report":
        return "delivery or read report (multipart/report)"
    for addr in {mail.from_addr, mail.reply_addr} - {""}:
        if _NO_REPLY_LOCALS.match(addr.split("@", 1)[0]):
            return f"automated sender {addr}"
    if not mail.from_addr and not mail.reply_addr:
        return "no sender address"
    return None


def _matches(address: str, allowed: list[str]) -> bool:
    domain = domain_of(address)
    return any(address == entry if "@" in entry else domain == entry for entry in allowed)


def _auth_results(mail: ParsedMail, authserv_id: str) -> str | None:
    """Our server's Authentication-Results: the topmost header carrying its authserv-id.

    A sender can add headers with any authserv-id; a conforming receiving server removes
    or overrides those naming itself, and its own is added above all of them.
    """
    wanted = authserv_id.strip().lower()
    for value in mail.header_all("Authentication-Results"):
        words = value.split(";", 1)[0].split()  # "Authentication-Results: ;" has no authserv-id
        if words and words[0].lower() == wanted:
            return value
    return None


def _aligned(domain: str, from_domain: str) -> bool:
    domain = domain.lower().lstrip("@").rstrip(".")
    return from_domain == domain or from_domain.endswith("." + domain)


def authenticated(mail: ParsedMail, authserv_id: str) -> bool:
    """True when our server's Authentication-Results vouch for the From domain."""
    results = _auth_results(mail, authserv_id)
    if results is None or not mail.from_addr:
        return False
    from_domain = domain_of(mail.from_addr)
    for clause in results.split(";")[1:]:
        clause = re.sub(r"\([^)]*\)", " ", clause).strip()  # drop RFC 8601 comments
        method = re.match(r"(dmarc|dkim|spf)\s*=\s*(\w+)", clause, re.I)
        if method is None or method.group(2).lower() != "pass":
            continue
        kind = method.group(1).lower()
        if kind == "dmarc":
            header_from = re.search(r"header\.from\s*=\s*([^\s;]+)", clause, re.I)
            if header_from is None or _aligned(header_from.group(1), from_domain):
                return True
        elif kind == "dkim":
            signer = re.search(r"header\.[di]\s*=\s*([^\s;]+)", clause, re.I)
            if signer is not None and _aligned(signer.group(1).rsplit("@", 1)[-1], from_domain):
                return True
        else:
            envelope = re.search(r"smtp\.mailfrom\s*=\s*([^\s;]+)", clause, re.I)
            if envelope is not None and _aligned(envelope.group(1).rsplit("@", 1)[-1], from_domain):
                return True
    return False


def sender_reason(mail: ParsedMail, config: EmailConfig) -> str | None:
    """Why this sender is not answered (allow-list, authentication), or None."""
    if config.allowed_senders and not _matches(mail.from_addr, config.allowed_senders):
        return f"sender {mail.from_addr or '(none)'} is not on allowed_senders"
    if config.trusted_authserv_id and not authenticated(mail, config.trusted_authserv_id):
        return f"sender {mail.from_addr or '(none)'} not authenticated by {config.trusted_authserv_id}"
    return None
