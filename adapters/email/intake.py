"""One fetched mail → admitted, ignored (and why), a duplicate, or unreadable.

Everything here is recorded before the caller moves the watermark: an
admitted mail is in the inbox; an ignored one has an audit row saying why
(loop protection, allow-list, authentication, rate cap); an unreadable one
has an audit row, a copy of its raw bytes in adapter state and an entry in
``/api/status``. Only trouble storing any of that (the database) escapes as an
exception, so the mail is fetched again later instead of being lost; a mail
itself can never make the poller retry forever.

Ignored mail is *not* admitted: the inbox holds requests, and an admitted
direct message is always answered. The audit row is its record.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from gateway import AdapterContext

from .config import EmailConfig
from .mailparse import ParsedMail, Unreadable, parse_mail, summary
from .normalize import attachment_key, external_id, message_key, to_envelope
from .screening import loop_reason, sender_reason
from .threads import ThreadMap, ours

__all__ = ["Intake", "Outcome"]

log = logging.getLogger("soulgate.adapters.email")
PROBLEMS_KEPT = 20  # unreadable mails listed in /api/status

OutcomeKind = Literal["admitted", "duplicate", "ignored", "unreadable"]


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    reason: str | None = None


def _short(value: str) -> str:
    return value if len(value) <= 200 and value.isprintable() else hashlib.sha256(value.encode()).hexdigest()


class Intake:
    def __init__(self, ctx: AdapterContext, config: EmailConfig, account: str, threads: ThreadMap) -> None:
        self.ctx, self.config, self.account, self.threads = ctx, config, account, threads
        self.counts: dict[str, int] = {"admitted": 0, "duplicate": 0, "ignored": 0, "unreadable": 0}
        self.problems: list[dict[str, Any]] = []

    async def load(self) -> None:
        saved = await self.ctx.get_state("unreadable")
        if isinstance(saved, list):
            self.problems = [p for p in saved if isinstance(p, dict)][-PROBLEMS_KEPT:]

    # -- the decision ---------------------------------------------------------------------

    async def take(self, raw: bytes, *, mailbox: str, uidvalidity: int, uid: int) -> Outcome:
        where: dict[str, Any] = {"mailbox": mailbox, "uidvalidity": uidvalidity, "uid": uid}
        try:
            mail = parse_mail(raw, max_attachment_bytes=self.config.max_attachment_bytes,
                              max_attachments=self.config.max_attachments)
        except Unreadable as exc:
            return await self.unreadable(raw, str(exc), **where)
        except Exception as exc:  # a parser bug must not stall the mailbox
            log.exception("email %s: cannot parse UID %s", self.account, uid)
            return await self.unreadable(raw, f"{type(exc).__name__}: {exc}", **where)

        if mail.message_id:
            known = await self.threads.lookup(mail.message_id)
            if known is not None and known.get("handled") in ("admitted", "ignored"):
                self.counts["duplicate"] += 1
                return Outcome("duplicate", f"Message-ID already {known['handled']}")

        reason = loop_reason(mail, self.config, ours=ours(mail.message_id, self.config.domain) is not None) \
            or sender_reason(mail, self.config)
        conversation = await self.threads.conversation_for(
            message_id=mail.message_id, in_reply_to=mail.in_reply_to, references=mail.references,
            fallback=external_id(mailbox, uidvalidity, uid),
        )
        if reason is None:
            reason = await self._over_cap(mail.from_addr or mail.reply_addr, conversation)
        if reason is not None:
            await self.ctx.audit("email_ignored", {"reason": reason, **where, **summary(mail),
                                                   "conversation": conversation})
            if mail.message_id:
                await self.threads.remember(mail.message_id, conversation, handled="ignored")
            self.counts["ignored"] += 1
            log.info("email %s: not answering UID %s (%s)", self.account, uid, reason)
            return Outcome("ignored", reason)

        try:
            envelope = to_envelope(mail, account=self.account, config=self.config, mailbox=mailbox,
                                   uidvalidity=uidvalidity, uid=uid, conversation=conversation, source=raw)
        except Exception as exc:
            log.exception("email %s: cannot build the request of UID %s", self.account, uid)
            return await self.unreadable(raw, f"{type(exc).__name__}: {exc}", **where)
        await self._keep_attachments(mail, message_key(mail, envelope.external_id))
        result = await self.ctx.admit(envelope)  # the inbox commit; errors escape: fetch again later
        if not result.inbox_id:  # the gateway stores nothing without text or attachments
            await self.ctx.audit("email_ignored", {"reason": "empty message", **where, **summary(mail)})
            if mail.message_id:
                await self.threads.remember(mail.message_id, conversation, handled="ignored")
            self.counts["ignored"] += 1
            return Outcome("ignored", "empty message")
        if result.created:
            await self._count(mail.from_addr or mail.reply_addr, conversation)
        await self.threads.remember_token(conversation)
        if mail.message_id:
            await self.threads.remember(mail.message_id, conversation)
        kind: OutcomeKind = "admitted" if result.created else "duplicate"
        self.counts[kind] += 1
        return Outcome(kind)

    async def unreadable(self, raw: bytes, error: str, *, mailbox: str, uidvalidity: int, uid: int) -> Outcome:
        """Keep the bytes and report: audit row, adapter state, ``/api/status``. Never retried."""
        key = f"unreadable:{mailbox}:{uidvalidity}:{uid}"
        kept = raw[: self.config.max_message_bytes]
        await self.ctx.set_state(key, {"error": error, "size": len(raw), "truncated": len(kept) < len(raw),
                                       "source_b64": base64.b64encode(kept).decode("ascii")})
        entry = {"mailbox": mailbox, "uidvalidity": uidvalidity, "uid": uid, "error": error[:500],
                 "size": len(raw), "state_key": key, "at": time.time()}
        await self.ctx.audit("email_unreadable", entry)
        self.problems = [*self.problems, entry][-PROBLEMS_KEPT:]
        await self.ctx.set_state("unreadable", self.problems)
        self.counts["unreadable"] += 1
        log.warning("email %s: UID %s in %s cannot be read (%s); kept and reported", self.account, uid,
                    mailbox, error)
        return Outcome("unreadable", error)

    # -- attachments ------------------------------------------------------------------------

    async def _keep_attachments(self, mail: ParsedMail, key: str) -> None:
        # In adapter state, not in the envelope: the inbox row stays small, and a plugin
        # fetches the bytes only when it wants them (Adapter.fetch_attachment).
        for i, att in enumerate(mail.attachments):
            if att.data is not None:
                await self.ctx.set_state(f"att:{attachment_key(key, i)}", {
                    "name": att.name, "mime": att.mime, "data_b64": base64.b64encode(att.data).decode("ascii"),
                }, expires_in=self.config.keep_attachments_days * 86_400)

    # -- the per-sender and per-thread caps -------------------------------------------------

    async def _stamps(self, kind: str, value: str) -> tuple[str, list[float]]:
        key = f"rate:{kind}:{_short(value)}"
        saved = await self.ctx.get_state(key)
        now = time.time()
        stamps = [float(t) for t in saved if isinstance(t, int | float)] if isinstance(saved, list) else []
        return key, [t for t in stamps if now - t < self.config.rate_window_seconds]

    async def _over_cap(self, sender: str, conversation: str) -> str | None:
        window = f"{self.config.rate_window_seconds:g}s"
        _, by_sender = await self._stamps("sender", sender)
        if len(by_sender) >= self.config.max_per_sender:
            return f"rate cap: {len(by_sender)} mails from {sender} answered in the last {window}"
        _, by_thread = await self._stamps("thread", conversation)
        if len(by_thread) >= self.config.max_per_thread:
            return f"rate cap: {len(by_thread)} mails in this thread answered in the last {window}"
        return None

    async def _count(self, sender: str, conversation: str) -> None:
        for kind, value in (("sender", sender), ("thread", conversation)):
            key, stamps = await self._stamps(kind, value)
            # stamps older than the window are ignored anyway: the row may go with them
            await self.ctx.set_state(key, [*stamps, time.time()], expires_in=self.config.rate_window_seconds)
