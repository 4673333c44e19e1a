"""Teams activity (Bot Framework JSON) → :class:`gateway.Envelope`.

Works on the wire JSON, not on botbuilder objects: the activity schema is the
Bot Framework protocol, which the Microsoft 365 Agents SDK speaks too, so this
module survives a change of SDK untouched.

Teams specifics handled here:

* ``conversationType`` personal / groupChat / channel → direct / group / channel;
* a channel thread's conversation id is ``<channel id>;messageid=<root id>``: the
  channel id is the conversation, the root id the thread;
* the bot is addressed when a ``mention`` entity names it (``mentioned.id`` is
  the bot's ``28:`` id); exactly that entity's text is removed, not every word
  that happens to equal the bot's name;
* attachments become segments; what can only be fetched through Microsoft Graph
  is labelled so (see docs/channels/teams.md).
"""

from __future__ import annotations

import mimetypes
import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

from gateway import (
    Attachment,
    Conversation,
    ConversationKind,
    Envelope,
    ReplyAddress,
    Segment,
    Sender,
)

from .errors import BadActivity

__all__ = [
    "NEEDS_GRAPH",
    "address_envelope",
    "conversation_reference",
    "message_envelope",
    "split_thread",
    "tenant_of",
]

_THREAD = re.compile(r"^(?P<base>.+?);messageid=(?P<root>[^;]+)$")
_IMG_SRC = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*["']([^"']+)["']""", re.I)
_MENTION_TAG = re.compile(r"^<at>(.*)</at>$", re.S)
NEEDS_GRAPH = "needs Microsoft Graph"
_FILE_INFO = "application/vnd.microsoft.teams.file.download.info"


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadActivity(f"{what} must be an object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadActivity(f"{what} must be a non-empty string")
    return value


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (optional, loosely typed fields)."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else an empty one (an int or object there is junk)."""
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _split_url(url: str) -> SplitResult | None:
    """``url`` split, or None when urlsplit refuses it (``"http://["`` raises ValueError)."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


def split_thread(conversation_id: str) -> tuple[str, str | None]:
    """``"19:c@thread.tacv2;messageid=17"`` → ``("19:c@thread.tacv2", "17")``."""
    m = _THREAD.match(conversation_id)
    return (m["base"], m["root"]) if m else (conversation_id, None)


def tenant_of(activity: dict[str, Any]) -> str | None:
    """The tenant Teams says the activity comes from (channelData first, as Microsoft advises)."""
    tenant = _text(_obj(_obj(activity.get("channelData")).get("tenant")).get("id"))
    return tenant or _text(_obj(activity.get("conversation")).get("tenantId")) or None


def _kind(conversation: dict[str, Any]) -> ConversationKind:
    kind = conversation.get("conversationType")
    if kind == "channel":
        return "channel"
    if kind == "groupChat" or (kind is None and conversation.get("isGroup")):
        return "group"
    return "direct"


def conversation_reference(activity: dict[str, Any], *, with_activity_id: bool = True) -> dict[str, Any]:
    """The ConversationReference JSON (what ``continue_conversation`` needs later)."""
    ref: dict[str, Any] = {
        "user": activity.get("from"),
        "bot": activity.get("recipient"),
        "conversation": activity.get("conversation"),
        "channelId": activity.get("channelId"),
        "serviceUrl": activity.get("serviceUrl"),
    }
    if activity.get("locale"):
        ref["locale"] = activity["locale"]
    if with_activity_id and activity.get("id"):
        ref["activityId"] = activity["id"]
    return ref


def _title(kind: ConversationKind, activity: dict[str, Any]) -> str | None:
    channel_data = _obj(activity.get("channelData"))
    if kind == "channel":
        team = _text(_obj(channel_data.get("team")).get("name"))
        channel = _text(_obj(channel_data.get("channel")).get("name"))
        return " / ".join(p for p in (team, channel) if p) or None
    if kind == "group":
        return _text(_obj(activity.get("conversation")).get("name")) or None
    return _text(_obj(activity.get("from")).get("name")) or None


def _parts(activity: dict[str, Any], account: str, channel: str, *, with_activity_id: bool) -> tuple[
    Conversation, str | None, Sender, ReplyAddress
]:
    conversation = _dict(activity.get("conversation"), "conversation")
    conv_id = _str(conversation.get("id"), "conversation.id")
    sender = _dict(activity.get("from"), "from")
    _str(sender.get("id"), "from.id")
    _dict(activity.get("recipient"), "recipient")
    service_url = _str(activity.get("serviceUrl"), "serviceUrl")
    split = _split_url(service_url)
    if split is None or split.scheme not in ("http", "https"):
        raise BadActivity("serviceUrl must be an http(s) URL")
    kind = _kind(conversation)
    base, root = split_thread(conv_id)
    channel_data = _obj(activity.get("channelData"))
    address = ReplyAddress(
        channel,
        account,
        {
            "reference": conversation_reference(activity, with_activity_id=with_activity_id),
            "kind": kind,
            "conversation_id": conv_id,
            "tenant_id": tenant_of(activity),
            "team_id": _obj(channel_data.get("team")).get("id"),
            "channel_id": _obj(channel_data.get("channel")).get("id") if kind == "channel" else None,
        },
    )
    who = Sender(
        # The AAD object id is what admins see in Entra and is stable across bots;
        # the "29:" id is this bot's alias for the user (kept in raw).
        id=str(sender.get("aadObjectId") or sender["id"]),
        display_name=_text(sender.get("name")) or None,
        is_bot=str(sender["id"]).startswith("28:") or sender.get("role") == "bot",
    )
    return Conversation(id=base, kind=kind, title=_title(kind, activity)), root, who, address


def _remove_once(text: str, piece: str) -> str:
    i = text.find(piece)
    if i < 0:
        return text
    before, after = text[:i], text[i + len(piece):]
    if before.endswith(" ") and (after.startswith(" ") or not after):
        before = before[:-1]  # don't leave a double space where the mention was
    return before + after


def _mentions(activity: dict[str, Any], text: str, bot_id: str) -> tuple[str, bool, list[Segment]]:
    addressed = False
    segments: list[Segment] = []
    for entity in _list(activity.get("entities")):
        if not isinstance(entity, dict) or entity.get("type") != "mention":
            continue
        mentioned = _obj(entity.get("mentioned"))
        piece = _text(entity.get("text"))
        if mentioned.get("id") == bot_id:
            addressed = True
            if piece:
                text = _remove_once(text, piece)
            continue
        name = _text(mentioned.get("name")) or None
        segments.append(Segment("mention", value=str(mentioned.get("id", "")), label=name))
        tag = _MENTION_TAG.match(piece) if piece else None
        if tag:
            text = text.replace(piece, "@" + tag.group(1), 1)
    return text.strip(), addressed, segments


def _attachments(activity: dict[str, Any]) -> list[Segment]:
    out: list[Segment] = []
    seen: set[str] = set()

    def add(att: Attachment, label: str | None = None) -> None:
        if att.ref and att.ref in seen:
            return
        if att.ref:
            seen.add(att.ref)
        out.append(Segment("attachment", value=att.ref or att.name, label=label, attachment=att))

    for item in _list(activity.get("attachments")):
        if not isinstance(item, dict):
            continue
        ctype = str(item.get("contentType") or "")
        content = item.get("content")
        name = str(item.get("name") or "")
        if ctype == _FILE_INFO and isinstance(content, dict):
            # A file sent in a personal chat: downloadUrl is pre-authenticated, short-lived.
            ftype = str(content.get("fileType") or "")
            mime = mimetypes.guess_type(f"x.{ftype}")[0] if ftype else None
            add(Attachment(name=name or "file", mime=mime or "application/octet-stream",
                           ref=_text(content.get("downloadUrl")) or None))
        elif ctype.startswith("image/") and item.get("contentUrl"):
            # A pasted image in a chat: fetching it needs the bot's own bearer token.
            add(Attachment(name=name or "image", mime=ctype, ref=str(item["contentUrl"])))
        elif ctype == "reference" and item.get("contentUrl"):
            # A file shared in a channel or group chat lives in SharePoint/OneDrive.
            mime = mimetypes.guess_type(name)[0] if name else None
            add(Attachment(name=name or "file", mime=mime or "application/octet-stream",
                           ref=str(item["contentUrl"])), NEEDS_GRAPH)
        elif ctype == "text/html" and isinstance(content, str):
            # Images in channel/group messages appear only as <img> tags pointing at
            # Graph hostedContents (or the chat's /v3/attachments store).
            for src in _IMG_SRC.findall(content):
                split = _split_url(src)
                host = ((split.hostname if split else None) or "").lower()
                label = NEEDS_GRAPH if host == "graph.microsoft.com" else None
                add(Attachment(name="image", mime="image/*", ref=src), label)
    return out


def message_envelope(activity: dict[str, Any], *, channel: str, account: str) -> Envelope | None:
    """A ``message`` activity as an Envelope; None for the bot's own messages."""
    conversation, thread, sender, address = _parts(activity, account, channel, with_activity_id=True)
    activity_id = _str(activity.get("id"), "id")
    bot_id = _text(_obj(activity.get("recipient")).get("id"))
    if _obj(activity.get("from")).get("id") == bot_id:
        return None
    text, mentioned, segments = _mentions(activity, _text(activity.get("text")), bot_id)
    segments.extend(_attachments(activity))
    return Envelope(
        channel=channel,
        account=account,
        # Teams message ids are millisecond timestamps, unique within a chat or
        # channel but not across them: scope the id by its conversation.
        external_id=f"{conversation.id}|{activity_id}",
        conversation=conversation,
        thread=thread,
        sender=sender,
        text=text,
        addressed=conversation.kind == "direct" or mentioned,
        segments=tuple(segments),
        reply_to=address,
        raw=activity,
    )


def address_envelope(activity: dict[str, Any], *, channel: str, account: str) -> Envelope:
    """An envelope that only carries where to reach a conversation (bot installed, member added)."""
    conversation, thread, sender, address = _parts(activity, account, channel, with_activity_id=False)
    return Envelope(
        channel=channel,
        account=account,
        external_id=f"{conversation.id}|{activity.get('type')}",
        conversation=conversation,
        thread=thread,
        sender=sender,
        text="",
        reply_to=address,
        raw=activity,
    )
