"""Mail threads → soulgate conversations, and the threading headers of answers.

A thread is held together by Message-IDs: each reply names its parent in
``In-Reply-To`` and the chain in ``References``. The conversation id is the
Message-ID of the thread's first mail (without the angle brackets). Every mail
we take in is recorded in adapter state (``mid:<Message-ID>`` → conversation),
and our answers' Message-IDs carry a token of their conversation
(``conv:<token>`` → conversation), so a reply that names any of them, even one
whose client trimmed ``References`` to just ``In-Reply-To``, lands in the same
conversation. Without a record, the first id of ``References``
(the thread's root) is used, which is what every other reply in that thread
carries too.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = [
    "ThreadMap", "bare_id", "conversation_token", "new_message_tag", "our_message_id", "ours",
    "references_for", "reply_subject", "subject_base",
]

_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|odp|vs|ref|r)\s*(\[\d+\]|\(\d+\))?\s*:\s*)+", re.IGNORECASE)
MAX_REFERENCES = 20
#: how long a Message-ID's conversation (and whether it was handled) is remembered; a reply
#: to an older mail still finds its thread through References or our answers' ids
MESSAGE_IDS_KEPT_SECONDS = 180 * 86_400.0

Getter = Callable[[str], Awaitable[Any]]


class Setter(Protocol):
    """``AdapterContext.set_state``'s shape."""

    async def __call__(self, key: str, value: Any, *, expires_in: float | None = None) -> None: ...


def bare_id(message_id: str) -> str:
    return message_id.strip().strip("<>")


def new_message_tag() -> str:
    """The random part of an answer's Message-ID, fixed when the reply is rendered."""
    return f"sg.{uuid.uuid4().hex}"


def conversation_token(conversation: str) -> str:
    return hashlib.sha256(conversation.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def our_message_id(tag: str, conversation: str | None, domain: str) -> str:
    """An answer's Message-ID: ``<sg.<random>.<conversation token>@<our domain>>``.

    The token names the conversation, so a reply that cites only this id maps back even
    when the answer was sent by a worker-only instance that never wrote adapter state.
    No getfqdn() (``make_msgid`` calls it, and it can stall without DNS).
    """
    return f"<{tag}.{conversation_token(conversation or '')}@{domain}>"


_OURS = re.compile(r"^<sg\.[0-9a-f]{32}\.([0-9a-f]{16})@([^<>@\s]+)>$")


def ours(message_id: str | None, domain: str) -> str | None:
    """The conversation token if ``message_id`` is one of our answers', else None."""
    found = _OURS.match(message_id or "")
    return found.group(1) if found and found.group(2).lower() == domain.lower() else None


def subject_base(subject: str) -> str:
    """The subject without any stack of ``Re:``/``AW:``/``SV:`` prefixes."""
    return _PREFIX.sub("", subject or "").strip()


def reply_subject(subject: str) -> str:
    base = subject_base(subject)
    return f"Re: {base}" if base else "Re: your message"


def references_for(parent_references: list[str], parent_id: str | None) -> list[str]:
    """The parent's References plus the parent, trimmed in the middle (the root stays first)."""
    refs = list(dict.fromkeys([*parent_references, *([parent_id] if parent_id else [])]))
    if len(refs) > MAX_REFERENCES:
        refs = [refs[0], *refs[-(MAX_REFERENCES - 1):]]
    return refs


def _key(message_id: str) -> str:
    mid = bare_id(message_id)
    # kv keys stay short and printable whatever a sender put in the Message-ID
    if len(mid) > 200 or not mid.isprintable():
        mid = "sha256:" + hashlib.sha256(mid.encode("utf-8", "surrogatepass")).hexdigest()
    return f"mid:{mid}"


class ThreadMap:
    """Message-ID → conversation, in adapter state (one key per Message-ID)."""

    def __init__(self, get: Getter, set_: Setter, domain: str) -> None:
        self._get, self._set, self.domain = get, set_, domain

    async def remember_token(self, conversation: str) -> None:
        """Record the conversation behind the token our answers' Message-IDs will carry."""
        await self._set(f"conv:{conversation_token(conversation)}", conversation)

    async def lookup(self, message_id: str) -> dict[str, Any] | None:
        value = await self._get(_key(message_id))
        return value if isinstance(value, dict) else None

    async def remember(self, message_id: str, conversation: str, *, ours: bool = False,
                       handled: str = "admitted") -> None:
        await self._set(_key(message_id), {"conversation": conversation, "ours": ours, "handled": handled},
                        expires_in=MESSAGE_IDS_KEPT_SECONDS)

    async def conversation_for(self, *, message_id: str | None, in_reply_to: list[str],
                               references: list[str], fallback: str) -> str:
        """The conversation of a mail: a known parent's, else the thread root, else its own id."""
        for mid in dict.fromkeys([*in_reply_to, *reversed(references)]):  # the parent first
            token = ours(mid, self.domain)
            if token is not None:
                conversation = await self._get(f"conv:{token}")
                if isinstance(conversation, str):
                    return conversation
                continue
            known = await self.lookup(mid)
            if known and isinstance(known.get("conversation"), str):
                return str(known["conversation"])
        if references:
            return bare_id(references[0])
        if in_reply_to:
            return bare_id(in_reply_to[0])
        return bare_id(message_id) if message_id else fallback
