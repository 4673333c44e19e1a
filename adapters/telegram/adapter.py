"""The Telegram adapter: one instance per configured bot (``[channels.telegram.<account>]``)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

import aiohttp
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramMigrateToChat
from aiogram.types import BufferedInputFile, Message, ReplyParameters, Update

from gateway import (
    Adapter,
    AdapterContext,
    Attachment,
    PermanentDeliveryError,
    RateLimit,
    Reply,
    ReplyAddress,
    SendResult,
    TransientDeliveryError,
)

from .config import TelegramConfig
from .normalize import BotIdentity, message_of, normalize
from .polling import Poller
from .render import render_chunks
from .sending import delivery_error, is_parse_error, rate_limits_for, scrubber
from .webhook import WebhookReceiver, derive_secret

__all__ = ["TelegramAdapter"]

log = logging.getLogger("soulgate.adapters.telegram")
_PHOTO_MIMES = {"image/jpeg", "image/png", "image/webp"}
_PHOTO_MAX = 10 * 1024 * 1024  # larger images go as documents


class TelegramAdapter(Adapter):
    channel = "telegram"

    def __init__(self, account: str, config: TelegramConfig) -> None:
        super().__init__(account)
        self.config = config
        self.delivery_policy = config.delivery_policy
        session = AiohttpSession(api=TelegramAPIServer.from_base(config.api_base), timeout=config.request_timeout)
        self.bot = Bot(token=config.token.get_secret_value(), session=session)
        self._scrub = scrubber(config.token.get_secret_value())
        self.webhook_path = config.webhook_path or f"/telegram/{account}"
        self._ctx: AdapterContext | None = None
        self._me: BotIdentity | None = None
        self._me_lock = asyncio.Lock()
        self._migrations: dict[int, int] = {}  # old group id → supergroup id
        self._poller: Poller | None = None
        self._webhook: WebhookReceiver | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._webhook_set = False
        self._closed = False
        self._sending = 0

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def allowed_updates(self) -> list[str]:
        kinds = ["message", "channel_post"]
        if self.config.edited_messages == "answer":
            kinds += ["edited_message", "edited_channel_post"]
        return kinds

    async def bind(self, ctx: AdapterContext) -> None:
        # a --role worker gateway sends without start(): it needs the known chat migrations
        # (a group that became a supergroup) and a context to store new ones
        self._ctx = ctx
        await self._load_migrations(ctx)

    async def start(self, ctx: AdapterContext) -> None:
        self._ctx = ctx
        await self._load_migrations(ctx)
        if self.config.mode == "webhook":
            token = self.config.token.get_secret_value()
            secret = self.config.webhook_secret.get_secret_value() if self.config.webhook_secret else None
            self._webhook = WebhookReceiver(secret=secret or derive_secret(token), ingest=self.ingest,
                                            prepare=self.identity)
            ctx.add_route("POST", self.webhook_path, self._webhook.handle)
            self._webhook_task = asyncio.create_task(self._set_webhook(secret or derive_secret(token)))
        else:
            self._poller = Poller(
                bot=self.bot, ctx=ctx, bot_id=self.config.bot_id, ingest=self.ingest,
                prepare=self._prepare_polling, timeout=self.config.poll_timeout,
                allowed_updates=self.allowed_updates, scrub=self._scrub,
            )
            self._poller.start()

    async def stop(self) -> None:
        if self._poller is not None:
            await self._poller.stop()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with suppress(BaseException):
                await self._webhook_task
        # Sends already under way (the gateway drains them after stopping adapters) keep the session.
        for _ in range(50):
            if not self._sending:
                break
            await asyncio.sleep(0.1)
        self._closed = True
        await self.bot.session.close()

    async def close(self) -> None:
        # A --role worker gateway sends through this adapter but never stops it: close here too.
        # (aiogram's AiohttpSession opens one ClientSession lazily and reuses it for every call.)
        self._closed = True
        await self.bot.session.close()

    async def identity(self) -> BotIdentity:
        """The bot's id and username (getMe, once)."""
        if self._me is None:
            async with self._me_lock:
                if self._me is None:
                    me = await self.bot.get_me()
                    self._me = BotIdentity(me.id, me.username or "")
        return self._me

    async def _prepare_polling(self) -> None:
        await self.identity()
        # A webhook left over from webhook mode makes getUpdates fail with 409 forever.
        await self.bot.delete_webhook(drop_pending_updates=False)

    async def _set_webhook(self, secret: str) -> None:
        delay = 1.0
        while True:
            try:
                await self.identity()
                await self.bot.set_webhook(
                    url=str(self.config.webhook_url), secret_token=secret,
                    allowed_updates=self.allowed_updates, drop_pending_updates=False,
                )
                self._webhook_set = True
                log.info("telegram %s: webhook set to %s", self.account, self.config.webhook_url)
                return
            except TelegramAPIError as exc:
                log.warning("telegram %s: setWebhook failed (%s); retrying in %.0fs",
                            self.account, self._scrub(exc.message), delay)
                await asyncio.sleep(delay)
                delay = min(60.0, delay * 2)

    # -- inbound ------------------------------------------------------------------------

    async def ingest(self, update: Update, raw: dict[str, Any]) -> None:
        """Admit one update, or decide it needs no answer. Returns after the inbox commit.

        Raises only when the update could not be stored (then it must not be confirmed).
        """
        assert self._ctx is not None
        found = message_of(update)
        if found is None:
            return  # an update kind we did not ask for
        msg, edited = found
        if msg.migrate_to_chat_id:
            await self._remember_migration(msg.chat.id, msg.migrate_to_chat_id, "service message")
            return
        if msg.migrate_from_chat_id:
            await self._remember_migration(msg.migrate_from_chat_id, msg.chat.id, "service message")
            return
        if edited and self.config.edited_messages == "ignore":
            return
        if msg.from_user is not None and msg.from_user.is_bot and msg.sender_chat is None:
            # Other bots never start a turn: no bot loops. (Anonymous admins and channels
            # speaking in a group come as a bot *with* sender_chat; those are people.)
            return
        if not self._allowed(msg):
            await self._ctx.audit("telegram_ignored", {
                "reason": "not on the allow-list", "update_id": update.update_id,
                "chat_id": msg.chat.id, "user_id": msg.from_user.id if msg.from_user else None,
            })
            return
        me = await self.identity()
        try:
            envelope = normalize(update, raw, account=self.account, me=me)
        except Exception as exc:  # a payload we cannot read must not block the bot forever
            log.exception("telegram %s: cannot read update %s", self.account, update.update_id)
            await self._ctx.audit("telegram_unreadable", {"update_id": update.update_id, "error": str(exc)})
            return
        if envelope is not None:
            await self._ctx.admit(envelope)

    def _allowed(self, msg: Message) -> bool:
        users, chats = self.config.allowed_user_ids, self.config.allowed_chat_ids
        if not users and not chats:
            return True
        if users and msg.from_user is not None and msg.from_user.id in users:
            return True
        # a group that became a supergroup stays allowed under its new id
        ids = {msg.chat.id} | {old for old, new in self._migrations.items() if new == msg.chat.id}
        return bool(chats) and not ids.isdisjoint(chats)

    async def _load_migrations(self, ctx: AdapterContext) -> None:
        saved = await ctx.get_state("migrations")
        if isinstance(saved, dict):
            self._migrations.update({int(k): int(v) for k, v in saved.items()})

    async def _remember_migration(self, old: int, new: int, learned_from: str) -> None:
        """A group became a supergroup: later sends to the old id go to the new one."""
        if self._migrations.get(old) == new or self._ctx is None:
            return
        self._migrations[old] = new
        saved = await self._ctx.get_state("migrations")
        merged = {**(saved if isinstance(saved, dict) else {}), str(old): new}
        await self._ctx.set_state("migrations", merged)
        await self._ctx.audit("telegram_chat_migrated", {
            "from_chat_id": old, "to_chat_id": new, "learned_from": learned_from,
        })
        log.info("telegram %s: chat %s migrated to %s", self.account, old, new)

    # -- outbound -----------------------------------------------------------------------

    def render(self, reply: Reply) -> list[Reply]:
        out: list[Reply] = []
        if reply.text.strip():
            for chunk in render_chunks(reply.text):
                meta = {"parse_mode": "HTML", "plain": chunk.markdown, "chunk": len(out)}
                out.append(Reply(text=chunk.html, in_reply_to=reply.in_reply_to,
                                 meta={**reply.meta, "telegram": meta}))
        for att in reply.attachments:  # one file per message: each send is one API call
            out.append(Reply(text="", attachments=(att,), in_reply_to=reply.in_reply_to,
                             meta={**reply.meta, "telegram": {"chunk": len(out)}}))
        return out

    def _chat(self, address: ReplyAddress) -> int:
        try:
            chat = int(address.data["chat_id"])
        except (KeyError, TypeError, ValueError):
            raise PermanentDeliveryError(f"not a Telegram address: {address.data!r}") from None
        return self._migrations.get(chat, chat)

    def rate_limits(self, address: ReplyAddress) -> list[RateLimit]:
        try:
            chat = self._chat(address)
        except PermanentDeliveryError:
            return []
        return rate_limits_for(self.config.bot_id, chat)

    async def typing(self, address: ReplyAddress) -> None:
        if self._closed or address.data.get("chat_type") == "channel":
            return  # channels show no chat actions
        thread = address.data.get("thread_id")
        await self.bot.send_chat_action(chat_id=self._chat(address), action="typing",
                                        message_thread_id=int(thread) if thread else None)

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        if self._closed:
            raise TransientDeliveryError("the telegram adapter is stopped")
        chat = self._chat(address)
        self._sending += 1
        try:
            try:
                message = await self._post(chat, address, reply)
            except TelegramMigrateToChat as exc:
                # We missed the service message: Telegram names the new id; go there now.
                await self._remember_migration(chat, exc.migrate_to_chat_id, "send error")
                chat = exc.migrate_to_chat_id
                message = await self._post(chat, address, reply)
        except TelegramAPIError as exc:
            raise delivery_error(exc, self._scrub) from exc
        finally:
            self._sending -= 1
        return SendResult(platform_message_id=str(message.message_id), extra={"chat_id": chat})

    async def _post(self, chat: int, address: ReplyAddress, reply: Reply) -> Message:
        data = address.data
        meta = reply.meta.get("telegram") or {}
        thread = int(data["thread_id"]) if data.get("thread_id") else None
        quote = None
        if (reply.in_reply_to and data.get("chat_type") != "private" and data.get("message_id")
                and meta.get("chunk", 0) == 0):
            # in a group the answer quotes the question; if it was deleted, send anyway
            quote = ReplyParameters(message_id=int(data["message_id"]), allow_sending_without_reply=True)
        common: dict[str, Any] = {"chat_id": chat, "message_thread_id": thread, "reply_parameters": quote}
        if reply.attachments:
            return await self._post_file(reply.attachments[0], common)
        if "parse_mode" not in meta:  # not rendered by us (should not happen): plain text
            return await self.bot.send_message(text=reply.text, parse_mode=None, **common)
        try:
            return await self.bot.send_message(text=reply.text, parse_mode="HTML", **common)
        except TelegramBadRequest as exc:
            if not is_parse_error(exc):
                raise
            log.warning("telegram %s: HTML refused (%s); sending as plain text", self.account, exc.message)
            return await self.bot.send_message(text=str(meta.get("plain") or reply.text),
                                               parse_mode=None, **common)

    async def _post_file(self, att: Attachment, common: dict[str, Any]) -> Message:
        if att.data is not None:
            file: Any = BufferedInputFile(att.data, filename=att.name)
        elif att.ref:
            file = att.ref  # a Telegram file id (or URL) we were given
        else:
            raise PermanentDeliveryError(f"attachment {att.name!r} has neither data nor ref")
        size = len(att.data) if att.data is not None else (att.size or 0)
        if att.mime in _PHOTO_MIMES and size <= _PHOTO_MAX:
            return await self.bot.send_photo(photo=file, **common)
        return await self.bot.send_document(document=file, **common)

    # -- files --------------------------------------------------------------------------

    async def fetch_attachment(self, attachment: Attachment, *, max_bytes: int | None = None) -> bytes:
        """Download an inbound file through the Bot API (getFile), refusing more than the cap.

        ``ValueError``: too large, or Telegram will not give it (the cloud Bot API serves files
        up to 20 MB); ``ConnectionError``: the download itself failed.
        """
        cap = min(max_bytes or self.config.max_download_bytes, self.config.max_download_bytes)
        if attachment.data is not None:
            data = attachment.data
        else:
            if not attachment.ref:
                raise ValueError(f"attachment {attachment.name!r} has no Telegram file id")
            if attachment.size is not None and attachment.size > cap:
                raise ValueError(f"attachment {attachment.name!r} is {attachment.size} bytes; the cap is {cap}")
            data = await self._download(attachment.ref, cap)
        if len(data) > cap:
            raise ValueError(f"attachment {attachment.name!r} is larger than {cap} bytes")
        return data

    async def _download(self, file_id: str, cap: int) -> bytes:
        try:
            info = await self.bot.get_file(file_id)
        except TelegramBadRequest as exc:
            raise ValueError(f"Telegram cannot give this file: {exc.message}") from None
        if info.file_size is not None and info.file_size > cap:
            raise ValueError(f"the file is {info.file_size} bytes; the cap is {cap}")
        if not info.file_path:
            raise ValueError("Telegram gave no download path for this file")
        url = self.bot.session.api.file_url(self.bot.token, info.file_path)
        buf = bytearray()
        try:
            async for piece in self.bot.session.stream_content(url, timeout=self.config.request_timeout):
                buf += piece
                if len(buf) > cap:  # the size Telegram reported may be missing or wrong
                    raise ValueError(f"the file is larger than the cap of {cap} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            # not `from exc`: aiohttp's message names the URL, and the URL holds the token
            status = getattr(exc, "status", None)
            raise ConnectionError(f"download failed: {type(exc).__name__}"
                                  + (f" (HTTP {status})" if status else "")) from None
        return bytes(buf)

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.config.mode,
            "bot": f"@{self._me.username}" if self._me else None,
            "bot_id": self.config.bot_id,
            "delivery_policy": self.delivery_policy,
            "migrated_chats": len(self._migrations),
        }
        if self._poller is not None:
            out.update(polling=self._poller.leading, polls=self._poller.polls,
                       conflicts=self._poller.conflicts, last_error=self._poller.last_error)
        if self._webhook is not None:
            out.update(webhook_path=self.webhook_path, webhook_set=self._webhook_set,
                       received=self._webhook.received, rejected=self._webhook.rejected)
        return out
