"""Telegram update → :class:`gateway.Envelope`.

Pure functions over aiogram's parsed types: no network, no state. Entity
offsets are UTF-16 code units (Telegram's unit), so every slice of the text
goes through :func:`utf16_slice`; a Python index would cut the wrong place as
soon as an emoji precedes the entity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiogram.types import Chat, Message, MessageEntity, Update

from gateway import Attachment, Conversation, ConversationKind, Envelope, ReplyAddress, Segment, Sender

__all__ = ["BotIdentity", "chat_kind", "message_of", "normalize", "utf16_slice"]

CHANNEL = "telegram"
_KINDS: dict[str, ConversationKind] = {
    "private": "direct", "group": "group", "supergroup": "group", "channel": "channel",
}


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who "the bot" is, from getMe: needed to tell mentions of us from mentions of others."""

    id: int
    username: str


def chat_kind(chat_type: str) -> ConversationKind:
    return _KINDS.get(chat_type, "group")


def utf16_slice(text: str, offset: int, length: int) -> str:
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"); it must not crash the update
    data = text.encode("utf-16-le", "surrogatepass")
    return data[offset * 2:(offset + length) * 2].decode("utf-16-le", errors="replace")


def message_of(update: Update) -> tuple[Message, bool] | None:
    """The message an update carries and whether it is an edit; None for other update kinds."""
    if update.message is not None:
        return update.message, False
    if update.channel_post is not None:
        return update.channel_post, False
    if update.edited_message is not None:
        return update.edited_message, True
    if update.edited_channel_post is not None:
        return update.edited_channel_post, True
    return None


def normalize(
    update: Update, raw: dict[str, Any], *, account: str, me: BotIdentity
) -> Envelope | None:
    """The envelope for a message update; None when there is nothing to answer (service messages)."""
    found = message_of(update)
    if found is None:
        return None
    msg, edited = found
    chat = msg.chat
    text, entities = (msg.text, msg.entities) if msg.text is not None else (msg.caption or "", msg.caption_entities)
    private = chat.type == "private"
    ents = list(entities or ())
    if _foreign_command(text, ents, me):
        return None  # "/help@other_bot": explicitly for another bot in the group
    addressed, clean, segments = _read_entities(text, ents, me)
    addressed = addressed or private or _is_reply_to_bot(msg, me)
    segments.extend(_reply_context(msg))
    segments.extend(_attachment_segments(msg))
    thread = str(msg.message_thread_id) if msg.is_topic_message and msg.message_thread_id else None
    if edited:
        # An edit is its own event: it must not collide with the original's natural key.
        alt = f"edit:{chat.id}:{msg.message_id}:{msg.edit_date or 0}"
    else:
        alt = f"msg:{chat.id}:{msg.message_id}"
    return Envelope(
        channel=CHANNEL,
        account=account,
        external_id=f"update:{update.update_id}",
        alt_ids=(alt,),
        conversation=Conversation(id=str(chat.id), kind=chat_kind(chat.type), title=_chat_title(chat)),
        thread=thread,
        sender=_sender(msg),
        text=clean,
        addressed=addressed,
        segments=tuple(segments),
        reply_to=ReplyAddress(CHANNEL, account, {
            "chat_id": chat.id,
            "message_id": msg.message_id,
            "thread_id": int(thread) if thread else None,
            "chat_type": chat.type,
        }),
        raw=raw,
    )


def _chat_title(chat: Chat) -> str | None:
    if chat.title:
        return chat.title
    name = " ".join(p for p in (chat.first_name, chat.last_name) if p)
    return name or (f"@{chat.username}" if chat.username else None)


def _sender(msg: Message) -> Sender:
    user = msg.from_user
    if msg.sender_chat is not None:  # anonymous group admins and channel posts speak as a chat
        sc = msg.sender_chat
        return Sender(id=str(sc.id), display_name=_chat_title(sc), handle=sc.username)
    if user is not None:
        return Sender(id=str(user.id), display_name=user.full_name, handle=user.username, is_bot=user.is_bot)
    return Sender(id=str(msg.chat.id), display_name=_chat_title(msg.chat), handle=msg.chat.username)


def _is_reply_to_bot(msg: Message, me: BotIdentity) -> bool:
    reply = msg.reply_to_message
    if reply is None:
        return False
    # In a forum topic every message "replies" to the topic's creation message, which may
    # well be the bot's own (if it created the topic): that is not a reply to the bot.
    if msg.is_topic_message and (
        reply.forum_topic_created is not None or reply.message_id == msg.message_thread_id
    ):
        return False
    return reply.from_user is not None and reply.from_user.id == me.id


def _foreign_command(text: str, entities: list[MessageEntity], me: BotIdentity) -> bool:
    first = next((e for e in entities if e.offset == 0 and e.type == "bot_command"), None)
    if first is None:
        return False
    _, _, target = utf16_slice(text, first.offset, first.length).partition("@")
    return bool(target) and target.lower() != me.username.lower()


def _read_entities(
    text: str, entities: list[MessageEntity], me: BotIdentity
) -> tuple[bool, str, list[Segment]]:
    """(addressed to us?, text without our mention, segments for the other entities)."""
    addressed = False
    remove: list[tuple[int, int]] = []  # UTF-16 spans to cut out of the text
    segments: list[Segment] = []
    handle = f"@{me.username}".lower()
    for ent in entities:
        part = utf16_slice(text, ent.offset, ent.length)
        if ent.type == "mention":
            if part.lower() == handle:
                addressed = True
                remove.append((ent.offset, ent.offset + ent.length))
            else:
                segments.append(Segment("mention", value=part.lstrip("@"), label=part))
        elif ent.type == "text_mention" and ent.user is not None:
            if ent.user.id == me.id:
                addressed = True
            else:
                segments.append(Segment("mention", value=str(ent.user.id), label=part))
        elif ent.type == "bot_command":
            command, _, target = part.partition("@")
            if target and target.lower() == me.username.lower():
                addressed = True
                start = ent.offset + len(command.encode("utf-16-le", "surrogatepass")) // 2
                remove.append((start, ent.offset + ent.length))  # "/help@bot" → "/help"
        elif ent.type == "url":
            segments.append(Segment("link", value=part))
        elif ent.type == "text_link" and ent.url:
            segments.append(Segment("link", value=ent.url, label=part))
        elif ent.type in ("code", "pre"):
            segments.append(Segment("code", value=part, label=ent.language))
        elif ent.type in ("blockquote", "expandable_blockquote"):
            segments.append(Segment("quote", value=part))
    return addressed, _cut(text, remove), segments


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    data = text.encode("utf-16-le", "surrogatepass")
    out: list[bytes] = []
    pos = 0
    leading = False
    for start, end in sorted(spans):
        if start * 2 < pos:
            continue  # overlapping entities: the first one already went
        out.append(data[pos:start * 2])
        pos = end * 2
        before = b"".join(out)
        # "hey @bot what" → "hey what": drop one space at the seam, not both
        if (not before or before.endswith(b" \x00")) and data[pos:pos + 2] == b" \x00":
            pos += 2
        leading = leading or not before.strip(b" \x00")
    out.append(data[pos:])
    result = b"".join(out).decode("utf-16-le", errors="replace")
    if leading:  # "@bot, what is ..." → "what is ..."
        result = result.lstrip(" ,:;")
    return result.strip()


def _reply_context(msg: Message) -> list[Segment]:
    """What the user replied to, as a quote (a topic's root message is not a reply)."""
    reply = msg.reply_to_message
    if msg.quote is not None and msg.quote.text:
        return [Segment("quote", value=msg.quote.text, label="reply")]
    if reply is None or (msg.is_topic_message and reply.message_id == msg.message_thread_id):
        return []
    said = reply.text or reply.caption
    return [Segment("quote", value=said, label="reply")] if said else []


def _attachment_segments(msg: Message) -> list[Segment]:
    found: list[tuple[str, Attachment]] = []
    if msg.photo:
        best = max(msg.photo, key=lambda p: (p.file_size or 0, p.width * p.height))
        found.append(("photo", Attachment(
            f"photo_{best.file_unique_id}.jpg", "image/jpeg", best.file_size, best.file_id)))
    if msg.document is not None:
        d = msg.document
        found.append(("document", Attachment(
            d.file_name or f"document_{d.file_unique_id}", d.mime_type or "application/octet-stream",
            d.file_size, d.file_id)))
    if msg.voice is not None:
        v = msg.voice
        found.append(("voice", Attachment(
            f"voice_{v.file_unique_id}.ogg", v.mime_type or "audio/ogg", v.file_size, v.file_id)))
    if msg.audio is not None:
        a = msg.audio
        found.append(("audio", Attachment(
            a.file_name or f"audio_{a.file_unique_id}.mp3", a.mime_type or "audio/mpeg",
            a.file_size, a.file_id)))
    if msg.video is not None:
        vd = msg.video
        found.append(("video", Attachment(
            vd.file_name or f"video_{vd.file_unique_id}.mp4", vd.mime_type or "video/mp4",
            vd.file_size, vd.file_id)))
    if msg.video_note is not None:
        vn = msg.video_note
        found.append(("video_note", Attachment(
            f"video_note_{vn.file_unique_id}.mp4", "video/mp4", vn.file_size, vn.file_id)))
    if msg.animation is not None:
        an = msg.animation
        found.append(("animation", Attachment(
            an.file_name or f"animation_{an.file_unique_id}.mp4", an.mime_type or "video/mp4",
            an.file_size, an.file_id)))
        found = [f for f in found if f[0] != "document"]  # Telegram sends a GIF as both
    if msg.sticker is not None:
        s = msg.sticker
        ext, mime = ("tgs", "application/x-tgsticker") if s.is_animated else (
            ("webm", "video/webm") if s.is_video else ("webp", "image/webp"))
        found.append(("sticker", Attachment(f"sticker_{s.file_unique_id}.{ext}", mime, s.file_size, s.file_id)))
    return [Segment("attachment", value=kind, label=att.name, attachment=att) for kind, att in found]
