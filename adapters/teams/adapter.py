"""The Teams adapter: webhook in (authenticate, admit, answer at once), proactive replies out.

Teams retries an activity whose request is not answered within ~15 s, so the
webhook never runs a turn: it validates the token, checks the tenant, admits
the activity to the inbox and answers 200. The reply is delivered later by the
delivery worker, as a proactive message to the stored ConversationReference.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import (
    Adapter,
    AdapterContext,
    PermanentDeliveryError,
    RateLimit,
    Reply,
    ReplyAddress,
    SendResult,
    jsontext,
    new_id,
    split_markdown,
    utf16_len,
)

from .config import TeamsConfig
from .errors import AuthRejected, AuthUnavailable, BadActivity
from .normalize import address_envelope, message_envelope, split_thread, tenant_of

if TYPE_CHECKING:
    from ._botframework import BotFramework

__all__ = ["STYLE_META", "TEAMS_LIMITS", "TeamsAdapter", "bucket"]

#: Teams' documented limits per bot and conversation: (operations, window seconds)
TEAMS_LIMITS: tuple[tuple[int, float], ...] = ((7, 1.0), (60, 30.0), (1800, 3600.0))
#: Reply.meta key a soulgate_reply hook sets from the route option ``reply_style``
STYLE_META = "teams_reply_style"
#: inline (base64) images larger than this would push the activity past Teams' size cap
INLINE_IMAGE_BYTES = 48 * 1024
#: how long the root of a multi-chunk top-level post is remembered: its later chunks are
#: sent within the outbox TTL (a day by default), so a week leaves room for a longer one
POST_ROOTS_KEPT_SECONDS = 7 * 86_400.0
_BEARER = re.compile(r"Bearer [^\s]+")
_DEV_BANNER = (
    "INSECURE DEV MODE: Teams account %r has no app_id; requests to %s are NOT authenticated and "
    "anyone who can reach it can post activities. Never expose this endpoint."
)


def bucket(operations: int, window: float) -> tuple[float, int]:
    """(interval, burst) of a GCRA bucket that never allows more than ``operations`` per ``window``.

    A bucket admits ``burst`` at once and then one per ``interval``, i.e. at most
    ``burst + window / interval`` in any window. The burst is a twentieth: what it
    takes from the steady rate, ``(operations - burst) / window``, stays 95% of
    Teams' (a quarter held a 100-message burst to 0.87x of 60/30 s, 0.75x over an hour).
    """
    burst = max(1, operations // 20)
    return window / (operations - burst), burst


class TeamsAdapter(Adapter):
    channel = "teams"

    def __init__(self, account: str, config: TeamsConfig, *, credentials_factory: Any = None) -> None:
        """``credentials_factory``: a botbuilder ``ServiceClientCredentialsFactory`` to use
        instead of the one the config implies (the spec's factory passes None)."""
        super().__init__(account)
        self.cfg = config
        self.delivery_policy = config.delivery_policy
        self._credentials_factory = credentials_factory
        self._bf: BotFramework | None = None
        self._ctx: AdapterContext | None = None
        self._closed = False  # no more inbound; sends after close() still work (a fresh BotFramework)
        self.counts: Counter[str] = Counter()

    # -- lifecycle ------------------------------------------------------------------

    async def bind(self, ctx: AdapterContext) -> None:
        # Every role sends, a --role worker gateway without start(): the state that
        # top-level posts need comes from this context, botbuilder loads here.
        self._ctx = ctx
        # botbuilder takes ~1 s to import: in a thread, so the loop (admin /healthz) stays free.
        await asyncio.to_thread(importlib.import_module, "adapters.teams._botframework")
        self._framework()

    async def start(self, ctx: AdapterContext) -> None:
        self._ctx = ctx  # the receiving context; it sends as well
        self._framework()
        if self.cfg.insecure_dev_mode and self.cfg.auth_disabled:
            ctx.log.warning(_DEV_BANNER, self.account, self.cfg.path)
        ctx.add_route("POST", self.cfg.path, self._handle)

    async def close(self) -> None:
        # Not in stop(): the gateway drains in-flight sends after stopping adapters, and a
        # worker-role gateway never stops them. A later send builds a fresh one.
        self._closed = True
        bf, self._bf = self._bf, None
        if bf is not None:
            await bf.close()

    def _framework(self) -> BotFramework:
        """botbuilder's part, built on first use (by bind, start, or a send without either)."""
        if self._bf is None:
            from ._botframework import BotFramework

            self._bf = BotFramework(self.cfg, self._credentials_factory)
        return self._bf

    def _running(self) -> tuple[AdapterContext, BotFramework]:
        if self._ctx is None:
            raise RuntimeError(f"teams adapter {self.account!r} is not started")
        return self._ctx, self._framework()

    # -- inbound --------------------------------------------------------------------

    def _refuse(self, status: int, reason: str, detail: str = "") -> web.Response:
        self.counts[{400: "bad_request", 401: "unauthorized", 403: "forbidden"}.get(status, "unavailable")] += 1
        if self._ctx is not None:
            self._ctx.log.info("refused a Teams request (%d): %s %s", status, reason, detail)
        return web.json_response({"error": reason}, status=status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._closed:  # shutting down: the listener closes next; Teams retries elsewhere
            return self._refuse(503, "shutting down, retry later")
        ctx, bf = self._running()
        header = request.headers.get("Authorization")
        if not self.cfg.auth_disabled and not _BEARER.fullmatch(header or ""):
            return self._refuse(401, "unauthorized", "(missing or malformed Authorization header)")
        try:
            activity = jsontext.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested ~1000 deep
            return self._refuse(400, "body must be a JSON activity")
        if not isinstance(activity, dict) or not isinstance(activity.get("type"), str):
            return self._refuse(400, "body must be a JSON activity with a type")
        try:
            await bf.authenticate(activity, header)
        except BadActivity as exc:
            return self._refuse(400, "body is not a Bot Framework activity", str(exc))
        except AuthUnavailable as exc:
            ctx.log.warning("cannot validate Teams tokens right now: %s", exc)
            return self._refuse(503, "token validation unavailable, retry later")
        except AuthRejected as exc:
            return self._refuse(401, "unauthorized", str(exc))
        tenant = tenant_of(activity)
        if not self.cfg.tenant_allowed(tenant):
            await ctx.audit(
                "teams_tenant_refused",
                {"tenant_id": tenant, "activity_type": activity.get("type"),
                 "conversation_id": (activity.get("conversation") or {}).get("id"),
                 "from": (activity.get("from") or {}).get("aadObjectId")},
            )
            return self._refuse(403, "tenant not allowed", f"(tenant {tenant!r})")
        try:
            await self._accept(ctx, activity)
        except BadActivity as exc:
            return self._refuse(400, f"invalid activity: {exc}")
        except Exception:
            # Nothing was stored: Teams retries the same activity later.
            ctx.log.exception("could not admit a Teams activity")
            return self._refuse(503, "could not store the activity, retry later")
        return web.Response(status=200)

    async def _accept(self, ctx: AdapterContext, activity: dict[str, Any]) -> None:
        kind = activity["type"]
        if kind == "message":
            envelope = message_envelope(activity, channel=self.channel, account=self.account)
            if envelope is None or not (envelope.text.strip() or envelope.segments):
                self.counts["ignored"] += 1  # the bot's own message, or a bare @mention
                return
            result = await ctx.admit(envelope)
            self.counts["admitted" if result.created else "duplicates"] += 1
        elif kind in ("conversationUpdate", "installationUpdate"):
            bot_id = (activity.get("recipient") or {}).get("id")
            removed = any(
                isinstance(m, dict) and m.get("id") == bot_id for m in activity.get("membersRemoved") or ()
            ) or activity.get("action") == "remove"
            if removed:
                self.counts["ignored"] += 1
                return
            # Proof that the bot can reach this conversation: keep its address for /api/send.
            await ctx.remember_conversation(address_envelope(activity, channel=self.channel, account=self.account))
            self.counts["remembered"] += 1
        else:
            self.counts["ignored"] += 1  # reactions, edits, invokes: not turns

    # -- outbound -------------------------------------------------------------------

    def render(self, reply: Reply) -> list[Reply]:
        inline, linked, notes = [], [], []
        for att in reply.attachments:
            if att.data is not None and att.mime.startswith("image/") and len(att.data) <= INLINE_IMAGE_BYTES:
                inline.append(att)
            elif att.data is None and (att.ref or "").startswith("https://"):
                linked.append(att)
            else:
                notes.append(f"_(attachment {att.name} not sent: files need Microsoft Graph)_")
        text = "\n\n".join(p for p in (reply.text, "\n".join(notes)) if p)
        pieces: list[tuple[str, tuple[Any, ...]]] = [
            (p, ()) for p in split_markdown(text, self.cfg.max_message_chars, measure=utf16_len)
        ]
        if not pieces:
            pieces = [("", ())]
        if linked:
            pieces[-1] = (pieces[-1][0], tuple(linked))
        if inline:  # base64 images count against the activity size cap: their own message
            pieces.append(("", tuple(inline)))
        group = new_id()
        return [
            Reply(text=t, attachments=atts, in_reply_to=reply.in_reply_to,
                  meta={**reply.meta, "teams_group": group, "teams_chunk": i, "teams_chunks": len(pieces)})
            for i, (t, atts) in enumerate(pieces)
        ]

    @staticmethod
    def _activity(reply: Reply) -> dict[str, Any]:
        activity: dict[str, Any] = {"type": "message", "text": reply.text, "textFormat": "markdown"}
        attachments = []
        for att in reply.attachments:
            url = (
                f"data:{att.mime};base64,{base64.b64encode(att.data).decode()}" if att.data is not None
                else att.ref
            )
            attachments.append({"contentType": att.mime, "contentUrl": url, "name": att.name})
        if attachments:
            activity["attachments"] = attachments
        return activity

    @staticmethod
    def _reference(address: ReplyAddress) -> dict[str, Any]:
        reference = address.data.get("reference")
        if not isinstance(reference, dict) or not isinstance(reference.get("conversation"), dict):
            raise PermanentDeliveryError("address has no Teams conversation reference")
        return reference

    def _state(self) -> AdapterContext:
        if self._ctx is None:
            raise RuntimeError(
                f"teams adapter {self.account!r}: a top-level post of several chunks needs adapter "
                "state, and neither bind() nor start() gave it a context")
        return self._ctx

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        bf = self._framework()
        reference = self._reference(address)
        conversation = dict(reference["conversation"])
        style = reply.meta.get(STYLE_META) or self.cfg.reply_style
        group, index = reply.meta.get("teams_group"), int(reply.meta.get("teams_chunk") or 0)
        top_level = style == "top_level" and address.data.get("kind") == "channel"
        # Chunks of one top-level post find its root in adapter state; checked before posting.
        state = self._state() if top_level and group and int(reply.meta.get("teams_chunks") or 1) > 1 else None
        if top_level:
            base, _root = split_thread(str(conversation.get("id", "")))
            # The first chunk starts a new post; the rest go into that post's thread.
            root = await state.get_state(f"post:{group}") if state is not None and index > 0 else None
            conversation["id"] = f"{base};messageid={root}" if root else base
        message_id = await bf.send({**reference, "conversation": conversation}, self._activity(reply))
        if state is not None and index == 0 and message_id:
            await state.set_state(f"post:{group}", message_id, expires_in=POST_ROOTS_KEPT_SECONDS)
        self.counts["sent"] += 1
        return SendResult(platform_message_id=message_id, extra={"conversation_id": conversation["id"]})

    async def typing(self, address: ReplyAddress) -> None:
        if address.data.get("kind") == "channel":
            return  # Teams shows no typing indicator in channels; don't spend the rate budget
        await self._framework().send(self._reference(address), {"type": "typing"})

    def rate_limits(self, address: ReplyAddress) -> list[RateLimit]:
        conversation = address.data.get("conversation_id") or (
            (address.data.get("reference") or {}).get("conversation") or {}
        ).get("id", "")
        key = f"teams:{self.account}:{conversation}"
        out = []
        for operations, window in TEAMS_LIMITS:
            interval, burst = bucket(operations, window)
            out.append(RateLimit(f"{key}:{operations}/{window:g}s", interval, burst))
        return out

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "app_id": self.cfg.app_id or None,
            "app_type": self.cfg.app_type,
            "path": self.cfg.path,
            "insecure_dev_mode": self.cfg.insecure_dev_mode,
            "allowed_tenants": self.cfg.allowed_tenants or ([self.cfg.tenant_id] if self.cfg.tenant_id else []),
            "requests": dict(self.counts),
            "cached_credentials": self._bf.credentials.cached if self._bf is not None else 0,
        }
        if self.cfg.insecure_dev_mode and self.cfg.auth_disabled:
            out["warning"] = "insecure_dev_mode: requests are not authenticated"
        return out
