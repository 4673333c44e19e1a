"""The email adapter: one instance per ``[channels.email.<account>]`` mailbox.

aioimaplib and aiosmtplib are imported only in :meth:`EmailAdapter.start` and
:meth:`EmailAdapter.send`, so a gateway without email accounts never loads
them (nor lxml, which the HTML converter needs only for an HTML mail).
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

from gateway import (
    Adapter,
    AdapterContext,
    Attachment,
    PermanentDeliveryError,
    Reply,
    ReplyAddress,
    SendResult,
    TransientDeliveryError,
)

from .config import EmailConfig
from .threads import ThreadMap, new_message_tag, our_message_id

if TYPE_CHECKING:
    from .inbound import MailboxWatcher
    from .intake import Intake

__all__ = ["EmailAdapter"]

log = logging.getLogger("soulgate.adapters.email")


class EmailAdapter(Adapter):
    channel = "email"

    def __init__(self, account: str, config: EmailConfig) -> None:
        super().__init__(account)
        self.config = config
        self.delivery_policy = config.delivery_policy
        self._ctx: AdapterContext | None = None
        self._intake: Intake | None = None
        self._watcher: MailboxWatcher | None = None
        self.sent = 0
        self.send_failures = 0
        self.last_send_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def bind(self, ctx: AdapterContext) -> None:
        # A --role worker gateway runs turns and sends without start(): sending needs only
        # the config (SMTP), but the attachments intake kept are read from adapter state.
        self._ctx = ctx

    async def start(self, ctx: AdapterContext) -> None:
        from .inbound import MailboxWatcher  # aioimaplib: only now that a mailbox is configured
        from .intake import Intake

        self._ctx = ctx
        threads = ThreadMap(ctx.get_state, ctx.set_state, self.config.domain)
        self._intake = Intake(ctx, self.config, self.account, threads)
        await self._intake.load()
        self._watcher = MailboxWatcher(ctx, self.config, self.account, self._intake)
        self._watcher.start()

    async def stop(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()

    # -- outbound -----------------------------------------------------------------------

    def render(self, reply: Reply) -> list[Reply]:
        # One mail per answer, never split. The Message-ID's random part is fixed here, at
        # turn commit, so a retried send carries the same id (mail clients drop repeats).
        meta = {**reply.meta, "email": {"tag": new_message_tag()}}
        return [Reply(text=reply.text, attachments=reply.attachments, in_reply_to=reply.in_reply_to, meta=meta)]

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        from .outbound import compose, deliver  # aiosmtplib: only when a mail goes out

        tag = str((reply.meta.get("email") or {}).get("tag") or new_message_tag())
        conversation = address.data.get("conversation")
        message_id = our_message_id(tag, str(conversation) if conversation else None, self.config.domain)
        msg = compose(reply, address, self.config, message_id)
        to = str(address.data["to"])
        try:
            await deliver(msg, self.config, [to])
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            self.send_failures += 1
            self.last_send_error = str(exc)
            raise
        self.sent += 1
        log.info("email %s: answered %s (%s)", self.account, to, message_id)
        return SendResult(platform_message_id=message_id, extra={"to": to})

    # -- files --------------------------------------------------------------------------

    async def fetch_attachment(self, attachment: Attachment, *, max_bytes: int | None = None) -> bytes:
        """An inbound attachment's bytes, kept in adapter state when the mail was taken in.

        ``ValueError`` when it was over ``max_attachment_bytes`` (listed, not kept), over
        ``max_bytes``, or is gone from adapter state. Works in every role: the bytes are in
        Postgres, whichever instance took the mail in.
        """
        cap = min(max_bytes or self.config.max_attachment_bytes, self.config.max_attachment_bytes)
        if attachment.data is not None:
            data = attachment.data
        else:
            if not attachment.ref:
                raise ValueError(f"attachment {attachment.name!r} was not kept (over the size or count cap)")
            if attachment.size is not None and attachment.size > cap:
                raise ValueError(f"attachment {attachment.name!r} is {attachment.size} bytes; the cap is {cap}")
            if self._ctx is None:
                raise RuntimeError(f"email adapter {self.account!r} has no context (neither bind() nor start() ran)")
            # kept by Intake._keep_attachments under this key
            saved = await self._ctx.get_state(f"att:{attachment.ref}")
            if not isinstance(saved, dict) or not isinstance(saved.get("data_b64"), str):
                raise ValueError(f"attachment {attachment.name!r} is no longer stored")
            data = base64.b64decode(saved["data_b64"])
        if len(data) > cap:
            raise ValueError(f"attachment {attachment.name!r} is larger than {cap} bytes")
        return data

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {
            "address": cfg.address,
            "imap": f"{cfg.imap.host}:{cfg.imap.effective_port} ({cfg.imap.tls})",
            "smtp": f"{cfg.smtp.host}:{cfg.smtp.effective_port} ({cfg.smtp.tls})",
            "delivery_policy": self.delivery_policy,
            "sent": self.sent, "send_failures": self.send_failures, "last_send_error": self.last_send_error,
        }
        if self._watcher is not None:
            out.update(self._watcher.status())
        if self._intake is not None:
            out.update(self._intake.counts)
            out["unreadable_mail"] = self._intake.problems[-5:]
        return out
