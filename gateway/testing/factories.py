"""Envelope factories per channel, and fake channels under real channel names.

A plugin that behaves differently on Telegram and on email (a filter that
drops email auto-replies, a transform that shortens Slack answers) needs
envelopes that look like the ones those adapters build: the same natural keys,
conversation ids and kinds, sender fields and ``raw`` payload keys. These
factories build them without a platform. ``reply_to.data`` follows the
channel's adapter too, but it stays opaque to plugins: only the adapter reads it.

To send one through a test gateway, run the gateway with a fake adapter of
that channel and admit the envelope through it::

    async with soulgate_gateway(adapter=fake_channel("telegram")) as gw:
        await gw.adapter.admit(telegram_envelope("/time", account=gw.adapter.account))
        await gw.expect_reply("UTC")
"""

from __future__ import annotations

import itertools
from typing import Any

from ..envelope import Conversation, ConversationKind, Envelope, ReplyAddress, Segment, Sender
from .fake_adapter import FakeAdapter

__all__ = [
    "console_envelope",
    "email_envelope",
    "fake_channel",
    "slack_envelope",
    "teams_envelope",
    "telegram_envelope",
]

_seq = itertools.count(1)
_TELEGRAM_KINDS: dict[str, ConversationKind] = {"private": "direct", "channel": "channel"}
_TEAMS_KINDS: dict[str, ConversationKind] = {"personal": "direct", "groupChat": "group"}


def fake_channel(channel: str, account: str = "test", **kwargs: Any) -> FakeAdapter:
    """A :class:`FakeAdapter` that answers under ``channel`` (e.g. ``"telegram"``)."""
    cls = type(f"Fake{channel.title()}Adapter", (FakeAdapter,), {"channel": channel})
    return cls(account, **kwargs)


def telegram_envelope(
    text: str,
    *,
    account: str = "test",
    chat_id: int = 1001,
    chat_type: str = "private",
    chat_title: str | None = None,
    user_id: int = 42,
    first_name: str = "Ada",
    username: str | None = "ada",
    message_id: int | None = None,
    update_id: int | None = None,
    topic_id: int | None = None,
    addressed: bool | None = None,
    segments: tuple[Segment, ...] = (),
) -> Envelope:
    """A Telegram message: keys ``(bot, update_id)`` and ``(chat_id, message_id)``.

    ``chat_type`` is Telegram's: ``private``, ``group``, ``supergroup`` or
    ``channel``. A forum topic (``topic_id``) is the envelope's thread.
    """
    n = next(_seq)
    message_id = message_id if message_id is not None else n
    update_id = update_id if update_id is not None else 100_000 + n
    kind = _TELEGRAM_KINDS.get(chat_type, "group")
    thread = str(topic_id) if topic_id is not None else None
    message: dict[str, Any] = {
        "message_id": message_id,
        "chat": {"id": chat_id, "type": chat_type, "title": chat_title},
        "from": {"id": user_id, "is_bot": False, "first_name": first_name, "username": username},
        "text": text,
    }
    if topic_id is not None:
        message.update(message_thread_id=topic_id, is_topic_message=True)
    return Envelope(
        channel="telegram",
        account=account,
        external_id=f"update:{update_id}",
        alt_ids=(f"msg:{chat_id}:{message_id}",),
        conversation=Conversation(id=str(chat_id), kind=kind, title=chat_title),
        thread=thread,
        sender=Sender(id=str(user_id), display_name=first_name, handle=username),
        text=text,
        addressed=kind == "direct" if addressed is None else addressed,
        segments=segments,
        reply_to=ReplyAddress("telegram", account, {
            "chat_id": chat_id, "topic_id": topic_id, "message_id": message_id,
        }),
        raw={"update_id": update_id, "message": message},
    )


def slack_envelope(
    text: str,
    *,
    account: str = "test",
    team: str = "T0001",
    channel_id: str = "D0001",
    user: str = "U0001",
    display_name: str = "ada",
    ts: str | None = None,
    thread_ts: str | None = None,
    event_id: str | None = None,
    kind: ConversationKind | None = None,
    addressed: bool | None = None,
    segments: tuple[Segment, ...] = (),
) -> Envelope:
    """A Slack message event: keys ``event_id`` and ``(team, channel, ts)``.

    ``D…`` channel ids are DMs; others default to kind ``channel``.
    """
    n = next(_seq)
    ts = ts or f"1700000000.{n:06d}"
    event_id = event_id or f"Ev{n:08d}"
    kind = kind or ("direct" if channel_id.startswith("D") else "channel")
    event = {"type": "message", "user": user, "channel": channel_id, "ts": ts, "text": text,
             "thread_ts": thread_ts, "team": team}
    return Envelope(
        channel="slack",
        account=account,
        external_id=event_id,
        alt_ids=(f"msg:{team}:{channel_id}:{ts}",),
        conversation=Conversation(id=channel_id, kind=kind),
        thread=thread_ts,
        sender=Sender(id=user, display_name=display_name, handle=display_name),
        text=text,
        addressed=kind == "direct" if addressed is None else addressed,
        segments=segments,
        reply_to=ReplyAddress("slack", account, {
            "team": team, "channel": channel_id, "thread_ts": thread_ts, "ts": ts,
        }),
        raw={"team_id": team, "event_id": event_id, "event": event},
    )


def teams_envelope(
    text: str,
    *,
    account: str = "test",
    conversation_id: str = "a:1personal",
    conversation_type: str = "personal",
    tenant: str = "tenant-1",
    user_id: str = "29:user-1",
    user_name: str = "Ada Lovelace",
    activity_id: str | None = None,
    service_url: str = "https://smba.trafficmanager.net/teams/",
    addressed: bool | None = None,
    segments: tuple[Segment, ...] = (),
) -> Envelope:
    """A Teams message activity: key ``activity.id``.

    ``conversation_type`` is Bot Framework's ``personal``, ``groupChat`` or
    ``channel``; a channel thread's id ends in ``;messageid=<root>``.
    """
    activity_id = activity_id or f"act-{next(_seq)}"
    kind = _TEAMS_KINDS.get(conversation_type, "channel")
    root, _, message = conversation_id.partition(";messageid=")
    reference = {
        "activity_id": activity_id,
        "user": {"id": user_id, "name": user_name},
        "bot": {"id": "28:bot", "name": "soulgate"},
        "conversation": {"id": conversation_id, "conversation_type": conversation_type, "tenant_id": tenant},
        "channel_id": "msteams",
        "service_url": service_url,
    }
    return Envelope(
        channel="teams",
        account=account,
        external_id=activity_id,
        conversation=Conversation(id=root, kind=kind),
        thread=message or None,
        sender=Sender(id=user_id, display_name=user_name),
        text=text,
        addressed=kind == "direct" if addressed is None else addressed,
        segments=segments,
        reply_to=ReplyAddress("teams", account, {"reference": reference}),
        raw={"type": "message", "id": activity_id, "text": text,
             "channelData": {"tenant": {"id": tenant}}, "serviceUrl": service_url},
    )


def email_envelope(
    text: str,
    *,
    account: str = "test",
    sender: str = "ada@example.org",
    sender_name: str = "Ada Lovelace",
    to: str = "bot@example.org",
    subject: str = "Hello",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    mailbox: str = "INBOX",
    uidvalidity: int = 1,
    uid: int | None = None,
    headers: dict[str, str] | None = None,
    segments: tuple[Segment, ...] = (),
) -> Envelope:
    """A mail: keys ``(mailbox, uidvalidity, uid)`` and ``Message-ID``.

    The conversation is the thread's root Message-ID (the first of
    ``references``, else this message's own), so replies stay in one history.
    ``headers`` lands in ``raw["headers"]`` (e.g. ``Auto-Submitted``).
    """
    n = next(_seq)
    uid = uid if uid is not None else n
    message_id = message_id or f"<m{n}@example.org>"
    root = references[0] if references else (in_reply_to or message_id)
    all_headers = {"From": f"{sender_name} <{sender}>", "To": to, "Subject": subject,
                   "Message-ID": message_id, **(headers or {})}
    if in_reply_to:
        all_headers["In-Reply-To"] = in_reply_to
    if references:
        all_headers["References"] = " ".join(references)
    return Envelope(
        channel="email",
        account=account,
        external_id=f"uid:{mailbox}:{uidvalidity}:{uid}",
        alt_ids=(f"mid:{message_id}",),
        conversation=Conversation(id=root, kind="direct", title=subject),
        sender=Sender(id=sender.lower(), display_name=sender_name, handle=sender),
        text=text,
        addressed=True,
        segments=segments,
        reply_to=ReplyAddress("email", account, {
            "to": sender, "subject": subject, "message_id": message_id,
            "references": [*references, message_id],
        }),
        raw={"headers": all_headers},
    )


def console_envelope(text: str, *, account: str = "local", user: str = "ada") -> Envelope:
    """A line typed into ``soulgate chat``."""
    return Envelope(
        channel="console",
        account=account,
        external_id=f"line-{next(_seq)}",
        conversation=Conversation(id=user, kind="direct", title="console"),
        sender=Sender(id=user, display_name=user, handle=user),
        text=text,
        addressed=True,
        reply_to=ReplyAddress("console", account, {"user": user}),
    )
