"""Events API payload → :class:`gateway.Envelope` (or the reason it is ignored).

Pure functions, no I/O: the adapter looks up thread membership and admits.
The same payload arrives over HTTP and Socket Mode, and the same message may
arrive twice (``app_mention`` and ``message`` twins, Slack's retries), so
everything here depends only on the payload: both twins build the same keys,
text and address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway import (
    Attachment,
    Conversation,
    ConversationKind,
    Envelope,
    ReplyAddress,
    Segment,
    Sender,
)

from .config import SlackConfig

__all__ = ["CHANNEL", "Identity", "Ignored", "Parsed", "message_key", "parse_event", "plain_text"]

CHANNEL = "slack"

#: message subtypes written by a person; every other subtype (bot_message,
#: message_changed, message_deleted, channel_join, …) is ignored, which is what
#: keeps two bots from answering each other forever
_HUMAN_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
_KINDS: dict[str, ConversationKind] = {
    "im": "direct", "mpim": "group", "channel": "channel", "group": "channel",
}
_CONTROL = re.compile(r"<([^<>\n]*)>")
_QUOTE = re.compile(r"^&gt;\s?(.*)$", re.M)


@dataclass(slots=True)
class Identity:
    """Who the bot is in its workspace (from ``auth.test``, or the event's authorizations)."""

    team_id: str | None = None
    bot_user_id: str | None = None
    bot_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """Why an event is not admitted; ``audit`` for the ones an operator should see."""

    reason: str
    audit: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Parsed:
    """An admissible event: the envelope, and whether thread membership may address it."""

    envelope: Envelope
    team: str
    thread_ts: str | None  # the thread replies go to (None: top level)
    check_thread: bool  # a not-yet-addressed reply in a thread: ask whether the bot is in it


def message_key(team: str, channel: str, ts: str) -> str:
    """The ``(team, channel, ts)`` natural key shared by an event's twins."""
    return f"msg:{team}:{channel}:{ts}"


def _kind(event: dict[str, Any]) -> ConversationKind:
    channel_type = event.get("channel_type")
    if isinstance(channel_type, str) and channel_type in _KINDS:
        return _KINDS[channel_type]
    # app_mention events carry no channel_type; D… ids are always DMs.
    return "direct" if str(event.get("channel", "")).startswith("D") else "channel"


def _ignored_by_allow_lists(cfg: SlackConfig, team: str, channel: str, user: str) -> Ignored | None:
    for what, value, allowed in (
        ("team", team, cfg.allowed_teams),
        ("channel", channel, cfg.allowed_channels),
        ("user", user, cfg.allowed_users),
    ):
        if allowed and value not in allowed:
            return Ignored(f"{what}_not_allowed", audit=True,
                           detail={"team": team, "conversation": channel, "user": user})
    return None


def parse_event(payload: dict[str, Any], account: str, cfg: SlackConfig, me: Identity) -> Parsed | Ignored:
    """Classify one ``event_callback`` payload; raises ValueError if it is malformed."""
    event = payload.get("event")
    if not isinstance(event, dict):
        raise ValueError("event_callback without an event object")
    etype = event.get("type")
    if etype not in ("message", "app_mention"):
        return Ignored(f"event type {etype!r}")
    subtype = event.get("subtype")
    # (a list or object as subtype is junk, and unhashable: no set lookup for it)
    if event.get("hidden") or not isinstance(subtype, str | None) or subtype not in _HUMAN_SUBTYPES:
        return Ignored(f"subtype {subtype!r}")
    if event.get("bot_id") or event.get("bot_profile"):
        return Ignored("bot message")  # ours or another bot's: never answer a bot
    user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
    if not (isinstance(user, str) and isinstance(channel, str) and isinstance(ts, str)):
        raise ValueError("message event without user, channel or ts")
    if not (user and channel and ts):
        raise ValueError("message event with an empty user, channel or ts")
    bot_user = me.bot_user_id or _authorized_bot(payload)
    if user == bot_user:
        return Ignored("own message")
    # The installation's team, not event.team (a shared channel's sender team):
    # both twins of one post then build the same key.
    team = str(payload.get("team_id") or event.get("team") or me.team_id or "")
    refused = _ignored_by_allow_lists(cfg, team, channel, user)
    if refused is not None:
        return refused

    kind = _kind(event)
    text, segments, mentioned = plain_text(_str(event.get("text")) or "", bot_user)
    segments += _files(event.get("files"))
    parent = event.get("thread_ts") if isinstance(event.get("thread_ts"), str) else None
    in_thread = parent is not None and parent != ts
    if in_thread:
        thread: str | None = parent
    elif cfg.thread_replies(channel, kind == "direct"):
        thread = ts  # the answer starts a thread under this message: its history lives there
    else:
        thread = None
    addressed = kind == "direct" or etype == "app_mention" or mentioned
    raw_profile = event.get("user_profile")
    profile: dict[str, Any] = raw_profile if isinstance(raw_profile, dict) else {}
    event_id = payload.get("event_id")
    key = message_key(team, channel, ts)
    envelope = Envelope(
        channel=CHANNEL,
        account=account,
        external_id=str(event_id) if event_id else key,
        alt_ids=(key,) if event_id else (),
        conversation=Conversation(id=channel, kind=kind),
        thread=thread,
        sender=Sender(
            id=user,
            display_name=_str(profile.get("display_name")) or _str(profile.get("real_name")),
            handle=_str(profile.get("name")),
        ),
        text=text,
        addressed=addressed,
        segments=tuple(segments),
        reply_to=ReplyAddress(CHANNEL, account, {
            "team": team, "channel": channel, "thread_ts": thread, "ts": ts,
        }),
        raw={k: payload.get(k) for k in ("team_id", "api_app_id", "event_id", "event_time", "event")},
    )
    return Parsed(
        envelope=envelope, team=team, thread_ts=thread,
        check_thread=in_thread and not addressed and cfg.thread_replies_addressed,
    )


def _authorized_bot(payload: dict[str, Any]) -> str | None:
    for auth in payload.get("authorizations") or ():
        if isinstance(auth, dict) and auth.get("is_bot") and auth.get("user_id"):
            return str(auth["user_id"])
    return None


def plain_text(text: str, bot_user: str | None) -> tuple[str, list[Segment], bool]:
    """Slack's text → plain text, the segments found in it, and whether the bot was mentioned.

    ``<@U…>`` becomes ``@label`` (the bot's own mention is removed), ``<#C…|name>``
    ``#name``, ``<url|label>`` the label with its URL, ``<!here>`` ``@here``;
    entities are decoded last so an escaped ``&lt;`` never looks like markup.
    """
    segments: list[Segment] = []
    mentioned = False

    def replace(m: re.Match[str]) -> str:
        nonlocal mentioned
        body, _, label = m.group(1).partition("|")
        if body.startswith("@"):
            uid = body[1:]
            if bot_user and uid == bot_user:
                mentioned = True
                return "\x00"
            segments.append(Segment("mention", uid, label or None))
            return "@" + (label or uid)
        if body.startswith("#"):
            segments.append(Segment("mention", body[1:], "#" + label if label else None))
            return "#" + (label or body[1:])
        if body.startswith("!"):
            word = body[1:].split("^", 1)[0]
            return label or "@" + word
        url = _unescape(body)
        shown = _unescape(label) if label else ""
        segments.append(Segment("link", url, shown or None))
        return url if not shown or shown in url else f"{shown} ({url})"

    out = _CONTROL.sub(replace, text)
    segments.extend(Segment("quote", _unescape(q)) for q in _QUOTE.findall(out) if q.strip())
    # Drop the bot's mention with the space after it; other spacing (code!) stays as sent.
    out = re.sub("\x00[ \t]?", "", _unescape(out)).strip()
    return out, segments, mentioned


def _str(value: Any) -> str | None:
    """A non-empty string field, or None (a payload may put anything where a name belongs)."""
    return value if isinstance(value, str) and value else None


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _files(files: Any) -> list[Segment]:
    out: list[Segment] = []
    for f in files if isinstance(files, list) else ():
        if not isinstance(f, dict):
            continue
        name = _str(f.get("name")) or _str(f.get("title")) or _str(f.get("id")) or "file"
        size = f.get("size")
        attachment = Attachment(
            name=name,
            mime=str(f.get("mimetype") or "application/octet-stream"),
            size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            ref=_str(f.get("url_private")) or _str(f.get("id")),  # fetching it needs the bot token
        )
        out.append(Segment("attachment", name, attachment=attachment))
    return out
