"""The http channel's adapter: one per ``[channels.http.<account>]`` table.

It receives nothing by itself: the shared :class:`~adapters.http.frontend.HttpFrontend`
admits requests in its name. ``send`` does nothing but succeed: the reply
travels back in the HTTP response, which the handler holding the request (in
this or another instance) returns once the delivery worker has marked the
chunk sent, the event that wakes it.
"""

from __future__ import annotations

from typing import Any

from gateway import (
    Adapter,
    AdapterContext,
    AdmitResult,
    Conversation,
    Envelope,
    Reply,
    ReplyAddress,
    Sender,
    SendResult,
    new_id,
)

from .config import HttpChannelConfig
from .frontend import HttpFrontend, key_digest
from .protocol import ChatRequest

__all__ = ["HttpAdapter"]


class HttpAdapter(Adapter):
    channel = "http"

    def __init__(self, account: str, config: HttpChannelConfig) -> None:
        super().__init__(account)
        self.config = config
        self.key_digests = [key_digest(k.get_secret_value()) for k in config.api_keys]
        self._ctx: AdapterContext | None = None
        self._frontend: HttpFrontend | None = None

    async def start(self, ctx: AdapterContext) -> None:
        self._ctx = ctx
        self._frontend = HttpFrontend.attach(ctx)
        self._frontend.register(self)
        loaded = self._frontend.agents(self, limited=False)
        unknown = [a for a in self.config.agents if a not in loaded]
        if unknown:  # not fatal: a reload may bring them; until then they answer 404
            ctx.log.warning("channels.http.%s: agents %s are not loaded (loaded: %s)",
                            self.account, ", ".join(unknown), ", ".join(sorted(loaded)))

    async def stop(self) -> None:
        if self._frontend is not None:
            frontend, self._frontend = self._frontend, None
            await frontend.unregister(self)

    async def admit(self, envelope: Envelope) -> AdmitResult:
        if self._ctx is None:
            raise RuntimeError("http adapter is not started")
        return await self._ctx.admit(envelope)

    def envelope(self, req: ChatRequest, conversation: str | None, idempotency_key: str | None) -> Envelope:
        """The request as an envelope; without a named conversation, a fresh one of its own."""
        env_id = new_id()
        conv = conversation or env_id
        return Envelope(
            id=env_id,
            channel=self.channel,
            account=self.account,
            # a retry with the same Idempotency-Key is a duplicate and waits for the first one's turn
            external_id=f"idem:{idempotency_key}" if idempotency_key else f"req:{env_id}",
            conversation=Conversation(id=conv, kind="direct"),
            sender=Sender(id=req.user or conv, display_name=req.user or "an API client"),
            text=req.text,
            reply_to=ReplyAddress(self.channel, self.account, {"conversation": conv}),
            raw={"model": req.model, "stream": req.stream, "user": req.user,
                 "earlier_messages": len(req.earlier), "idempotency_key": idempotency_key},
            agent=req.model,
        )

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        return SendResult()

    def status(self) -> dict[str, Any]:
        return {
            "api_keys": len(self.config.api_keys),
            "agents": list(self.config.agents) or "all",
            "waiting_requests": self._frontend.waiter.waiting if self._frontend else 0,
        }
