"""Answers: compose the MIME message and hand it to the SMTP server (aiosmtplib).

TLS is explicit: ``implicit`` is TLS from the first byte, ``starttls`` upgrades
and *fails* when the server does not offer STARTTLS (aiosmtplib's default,
``start_tls=None``, would quietly carry on in plaintext), ``none`` is
plaintext. The send is split into its steps so an error can be classified:
anything before DATA means the mail did not leave (retry), a refusal code says
whether retrying can help (4xx) or not (5xx), and a lost connection or timeout
*during* DATA means nobody knows whether the server took it
(:class:`~gateway.OutcomeUnknown`; the adapter's ``delivery_policy`` decides).

Imported only when an email adapter sends (see ``adapters/email/adapter.py``).
"""

from __future__ import annotations

import email.policy
import email.utils
import ssl
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from markdown_it import MarkdownIt

from gateway import OutcomeUnknown, PermanentDeliveryError, Reply, ReplyAddress, TransientDeliveryError

from .config import EmailConfig, SmtpSettings, is_address
from .threads import references_for, reply_subject

__all__ = ["compose", "deliver", "markdown_to_html"]

_md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
_STYLE = ("body{font-family:sans-serif;line-height:1.4}pre,code{font-family:monospace;"
          "background:#f4f4f4}pre{padding:.5em;overflow-x:auto}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:.2em .5em}blockquote{border-left:3px solid #ccc;"
          "margin-left:0;padding-left:1em;color:#555}")


def markdown_to_html(text: str) -> str:
    """The HTML alternative of an answer (raw HTML in the Markdown stays text)."""
    body = _md.render(text)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><style>{_STYLE}</style></head>'
            f"<body>\n{body}</body></html>\n")


def _address(name: str | None, addr: str) -> Address:
    local, _, domain = addr.rpartition("@")
    return Address(display_name=(name or "").replace("\r", " ").replace("\n", " "), username=local, domain=domain)


def compose(reply: Reply, address: ReplyAddress, config: EmailConfig, message_id: str) -> EmailMessage:
    """The answer as a MIME message: text/plain (the Markdown) + text/html, threaded."""
    data = address.data
    to = str(data.get("to") or "")
    if not is_address(to):
        raise PermanentDeliveryError(f"not an email address to answer: {to!r}")
    msg = EmailMessage(policy=email.policy.SMTP)
    try:
        msg["From"] = _address(config.display_name, config.address)
        msg["To"] = _address(data.get("to_name"), to)
        # a stored address is data, not headers: no line breaks get through to become headers
        msg["Subject"] = reply_subject(" ".join(str(data.get("subject") or "").split()))
        msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
        msg["Message-ID"] = message_id
        parent = data.get("message_id")
        if parent:
            msg["In-Reply-To"] = str(parent)
        refs = references_for([str(r) for r in data.get("references") or []], str(parent) if parent else None)
        if refs:
            msg["References"] = " ".join(refs)
        # RFC 3834: this is an automatic answer; responders (and we) must not answer it
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"  # Exchange: no out-of-office replies to us
        msg.set_content(reply.text)
        msg.add_alternative(markdown_to_html(reply.text), subtype="html")
        for att in reply.attachments:
            if att.data is None:
                raise PermanentDeliveryError(f"attachment {att.name!r} has no data to send")
            maintype, _, subtype = att.mime.partition("/")
            msg.add_attachment(att.data, maintype=maintype or "application",
                               subtype=subtype or "octet-stream", filename=att.name)
    except (ValueError, TypeError) as exc:  # a header value the policy refuses
        raise PermanentDeliveryError(f"cannot build the mail: {exc}") from exc
    return msg


def _client(settings: SmtpSettings, helo: str) -> Any:
    secure = settings.tls != "none"
    kwargs: dict[str, Any] = {
        "hostname": settings.host, "port": settings.effective_port, "timeout": settings.timeout_seconds,
        # all three explicit: start_tls=None would silently fall back to plaintext
        "use_tls": settings.tls == "implicit", "start_tls": settings.tls == "starttls",
        "local_hostname": helo,  # aiosmtplib's default asks getfqdn(), which can stall without DNS
    }
    if secure:
        kwargs["tls_context"] = settings.tls_context()
    if settings.user is not None and settings.password is not None:
        secret = settings.password.get_secret_value()
        kwargs["username"] = settings.user
        if settings.auth == "xoauth2":
            async def token() -> str:
                return secret

            kwargs["oauth_token_generator"] = token
        else:
            kwargs["password"] = secret
    return aiosmtplib.SMTP(**kwargs)


def _refusal(step: str, exc: aiosmtplib.SMTPResponseException) -> Exception:
    text = f"SMTP {step} refused: {exc.code} {exc.message}"
    return PermanentDeliveryError(text) if exc.code >= 500 else TransientDeliveryError(text)


async def deliver(msg: EmailMessage, config: EmailConfig, recipients: list[str]) -> None:
    settings = config.smtp
    try:
        data = msg.as_bytes()
    except (UnicodeError, ValueError) as exc:  # e.g. a non-ASCII address (SMTPUTF8 is not used)
        raise PermanentDeliveryError(f"cannot encode the mail: {exc}") from exc
    smtp = _client(settings, settings.helo_name or config.domain)
    step = "connect"
    try:
        try:
            await smtp.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise PermanentDeliveryError(f"SMTP login refused: {exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise TransientDeliveryError(f"SMTP server refused the session: {exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPException as exc:
            if settings.tls == "starttls" and "starttls" in str(exc).lower():
                raise PermanentDeliveryError(
                    f"the SMTP server does not offer STARTTLS ({exc}); tls = \"starttls\" never falls "
                    "back to plaintext") from exc
            raise TransientDeliveryError(f"SMTP connection failed: {type(exc).__name__}: {exc}") from exc
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            raise TransientDeliveryError(f"SMTP connection failed: {type(exc).__name__}: {exc}") from exc
        step = "MAIL FROM"
        await smtp.mail(config.address)
        for rcpt in recipients:
            step = "RCPT TO"
            await smtp.rcpt(rcpt)
        step = "DATA"
        await smtp.data(data)
    except aiosmtplib.SMTPResponseException as exc:
        raise _refusal(step, exc) from exc
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError, TimeoutError) as exc:
        if step == "DATA":
            raise OutcomeUnknown(f"SMTP connection lost during DATA: {type(exc).__name__}: {exc}") from exc
        raise TransientDeliveryError(f"SMTP {step} failed: {type(exc).__name__}: {exc}") from exc
    except (aiosmtplib.SMTPNotSupported, UnicodeEncodeError) as exc:  # a non-ASCII address, no SMTPUTF8
        raise PermanentDeliveryError(f"SMTP {step}: cannot be sent: {exc}") from exc
    except aiosmtplib.SMTPException as exc:
        raise TransientDeliveryError(f"SMTP {step} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if smtp.is_connected:
            try:
                await smtp.quit(timeout=5)
            except Exception:
                smtp.close()
