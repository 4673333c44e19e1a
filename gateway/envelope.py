"""The common envelope every platform event is turned into, and the reply types.

Envelopes are built once, at the adapter edge, and are immutable from then on:
the dispatch worker, plugins and agents all see the same object, and what was
stored in the inbox is exactly what is processed after a restart. Every type
here round-trips through JSON (``to_json``/``from_json``) because the inbox and
outbox keep them as JSONB.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

__all__ = [
    "Attachment",
    "Conversation",
    "ConversationKind",
    "Envelope",
    "Reply",
    "ReplyAddress",
    "Segment",
    "SegmentKind",
    "Sender",
    "new_id",
]

ConversationKind = Literal["direct", "group", "channel"]
SegmentKind = Literal["mention", "link", "quote", "attachment", "code"]

_T = TypeVar("_T")


def new_id() -> str:
    """A fresh gateway id (uuid4, as text so it survives JSON unchanged)."""
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Conversation:
    """Where a message was said: a DM, a group chat, or a channel."""

    id: str
    kind: ConversationKind = "direct"
    title: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        kind = data.get("kind", "direct")
        if kind not in ("direct", "group", "channel"):
            raise ValueError(f"conversation kind must be direct, group or channel, not {kind!r}")
        return cls(id=str(data["id"]), kind=kind, title=data.get("title"))


@dataclass(frozen=True, slots=True)
class Sender:
    """Who said it, as the platform names them."""

    id: str
    display_name: str | None = None
    handle: str | None = None
    is_bot: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "display_name": self.display_name,
            "handle": self.handle,
            "is_bot": self.is_bot,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sender:
        return cls(
            id=str(data["id"]),
            display_name=data.get("display_name"),
            handle=data.get("handle"),
            is_bot=bool(data.get("is_bot", False)),
        )


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with a message or goes with a reply.

    ``ref`` is whatever the adapter needs to fetch the bytes later (a Telegram
    file id, a Slack private URL, an email part index); ``data`` carries inline
    bytes only for outbound attachments that a skill produced.
    """

    name: str
    mime: str = "application/octet-stream"
    size: int | None = None
    ref: str | None = None
    data: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "mime": self.mime,
            "size": self.size,
            "ref": self.ref,
        }
        if self.data is not None:
            out["data_hex"] = self.data.hex()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attachment:
        raw = data.get("data_hex")
        return cls(
            name=str(data["name"]),
            mime=str(data.get("mime", "application/octet-stream")),
            size=data.get("size"),
            ref=data.get("ref"),
            data=bytes.fromhex(raw) if raw is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Segment:
    """A structured piece of the message beside its plain text.

    ``value`` is the mentioned user id, the URL, the quoted text or the code;
    ``attachment`` is set for attachment segments.
    """

    kind: SegmentKind
    value: str = ""
    label: str | None = None
    attachment: Attachment | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "label": self.label,
            "attachment": self.attachment.to_json() if self.attachment else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Segment:
        att = data.get("attachment")
        kind = data["kind"]
        if kind not in ("mention", "link", "quote", "attachment", "code"):
            raise ValueError(f"unknown segment kind {kind!r}")
        return cls(
            kind=kind,
            value=str(data.get("value", "")),
            label=data.get("label"),
            attachment=Attachment.from_json(att) if att else None,
        )


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    """Everything needed to answer later, after a queue or a restart.

    ``data`` is channel-specific and opaque to the core (Telegram chat id, topic
    and message id; Slack channel and thread_ts; a Teams ConversationReference;
    email Message-ID, References, subject and recipient). Only the adapter of
    ``channel``/``account`` interprets it.
    """

    channel: str
    account: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"channel": self.channel, "account": self.account, "data": self.data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplyAddress:
        payload = data.get("data") or {}
        if not isinstance(payload, dict):
            raise ValueError("reply address data must be an object")
        return cls(channel=str(data["channel"]), account=str(data["account"]), data=payload)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One inbound platform event, normalized.

    ``external_id`` is the platform's natural key (unique per channel and
    account in the inbox); ``alt_ids`` are further natural keys under which the
    same event may arrive again (Slack's ``app_mention`` + ``message`` twins,
    Telegram's webhook vs. polling, an email seen under a new UIDVALIDITY).

    ``agent`` is set only by a channel whose protocol names the agent itself (the
    http channel's ``model``): the router then uses it instead of the matching
    route's agent. It is a field rather than a key in ``raw`` so no platform
    payload can ever choose an agent.
    """

    channel: str
    account: str
    external_id: str
    conversation: Conversation
    sender: Sender
    text: str
    reply_to: ReplyAddress
    id: str = field(default_factory=new_id)
    received_at: datetime = field(default_factory=_now)
    thread: str | None = None
    addressed: bool = True
    segments: tuple[Segment, ...] = ()
    alt_ids: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None

    @property
    def conversation_key(self) -> str:
        """The unit of ordering and history: one conversation thread on one account."""
        return f"{self.channel}:{self.account}:{self.conversation.id}:{self.thread or ''}"

    def evolve(self, **changes: Any) -> Envelope:
        """A copy with some fields changed (for inbound enrichers)."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "channel": self.channel,
            "account": self.account,
            "external_id": self.external_id,
            "alt_ids": list(self.alt_ids),
            "received_at": self.received_at.isoformat(),
            "conversation": self.conversation.to_json(),
            "thread": self.thread,
            "sender": self.sender.to_json(),
            "text": self.text,
            "addressed": self.addressed,
            "segments": [s.to_json() for s in self.segments],
            "reply_to": self.reply_to.to_json(),
            "raw": self.raw,
        }
        if self.agent is not None:  # only then: every other envelope keeps its JSON unchanged
            out["agent"] = self.agent
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        received = datetime.fromisoformat(data["received_at"])
        if received.tzinfo is None:
            received = received.replace(tzinfo=UTC)
        return cls(
            id=str(data["id"]),
            channel=str(data["channel"]),
            account=str(data["account"]),
            external_id=str(data["external_id"]),
            alt_ids=tuple(str(a) for a in data.get("alt_ids", ())),
            received_at=received,
            conversation=Conversation.from_json(data["conversation"]),
            thread=data.get("thread"),
            sender=Sender.from_json(data["sender"]),
            text=str(data.get("text", "")),
            addressed=bool(data.get("addressed", True)),
            segments=tuple(Segment.from_json(s) for s in data.get("segments", ())),
            reply_to=ReplyAddress.from_json(data["reply_to"]),
            raw=dict(data.get("raw") or {}),
            agent=str(data["agent"]) if data.get("agent") is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """What an agent or skill answers: Markdown text plus attachments.

    The destination is never chosen here: the pipeline sends it to the origin
    envelope's ``reply_to`` (or, for a proactive send, to an explicitly named
    stored address).
    """

    text: str
    attachments: tuple[Attachment, ...] = ()
    in_reply_to: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "attachments": [a.to_json() for a in self.attachments],
            "in_reply_to": self.in_reply_to,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reply:
        return cls(
            text=str(data.get("text", "")),
            attachments=tuple(Attachment.from_json(a) for a in data.get("attachments", ())),
            in_reply_to=data.get("in_reply_to"),
            meta=dict(data.get("meta") or {}),
        )

