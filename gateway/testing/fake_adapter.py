"""An in-memory channel for tests: inject messages, see what was sent, script send failures."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..adapter import Adapter, AdapterContext, AdmitResult, DeliveryPolicy, RateLimit, SendResult
from ..envelope import Conversation, ConversationKind, Envelope, Reply, ReplyAddress, Segment, Sender

__all__ = ["FakeAdapter", "SentMessage", "make_envelope"]

_ids = itertools.count(1)


def make_envelope(
    text: str,
    *,
    channel: str = "fake",
    account: str = "test",
    conversation: str = "conv-1",
    kind: ConversationKind = "direct",
    sender: str = "user-1",
    sender_name: str | None = None,
    thread: str | None = None,
    addressed: bool = True,
    external_id: str | None = None,
    alt_ids: tuple[str, ...] = (),
    segments: tuple[Segment, ...] = (),
    raw: dict[str, Any] | None = None,
) -> Envelope:
    """An envelope as an adapter of ``channel`` would build it."""
    return Envelope(
        channel=channel,
        account=account,
        external_id=external_id or f"ext-{next(_ids)}",
        alt_ids=alt_ids,
        conversation=Conversation(id=conversation, kind=kind),
        thread=thread,
        sender=Sender(id=sender, display_name=sender_name or sender),
        text=text,
        addressed=addressed,
        segments=segments,
        reply_to=ReplyAddress(channel, account, {"conversation": conversation, "thread": thread}),
        raw=raw or {},
    )


@dataclass(frozen=True, slots=True)
class SentMessage:
    address: ReplyAddress
    reply: Reply

    @property
    def text(self) -> str:
        return self.reply.text

    @property
    def conversation(self) -> str:
        return str(self.address.data.get("conversation"))


class FakeAdapter(Adapter):
    """Channel ``fake``. ``fail_next`` scripts exceptions for the next sends."""

    channel = "fake"

    def __init__(
        self,
        account: str = "test",
        *,
        chunk_limit: int | None = None,
        limits: Callable[[ReplyAddress], list[RateLimit]] | None = None,
        delivery_policy: DeliveryPolicy = "never_lost",
        send_delay: float = 0.0,
    ) -> None:
        super().__init__(account)
        self.sent: list[SentMessage] = []
        self.attempts = 0
        self.failures: deque[BaseException] = deque()
        self.chunk_limit = chunk_limit
        self._limits = limits
        self.delivery_policy = delivery_policy
        self.send_delay = send_delay
        self.ctx: AdapterContext | None = None
        self._arrived = asyncio.Condition()

    async def start(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    async def inject(self, text: str, **kwargs: Any) -> AdmitResult:
        """Admit a message as if the platform delivered it."""
        return await self.admit(make_envelope(text, channel=self.channel, account=self.account, **kwargs))

    async def admit(self, envelope: Envelope) -> AdmitResult:
        if self.ctx is None:
            raise RuntimeError("fake adapter not started")
        return await self.ctx.admit(envelope)

    def fail_next(self, *errors: BaseException) -> None:
        self.failures.extend(errors)

    def render(self, reply: Reply) -> list[Reply]:
        if self.chunk_limit is None:
            return [reply]
        from ..render import split_markdown

        return [Reply(text=t, in_reply_to=reply.in_reply_to) for t in split_markdown(reply.text, self.chunk_limit)]

    def rate_limits(self, address: ReplyAddress) -> list[RateLimit]:
        return self._limits(address) if self._limits else []

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        self.attempts += 1
        if self.send_delay:
            await asyncio.sleep(self.send_delay)
        if self.failures:
            raise self.failures.popleft()
        async with self._arrived:
            self.sent.append(SentMessage(address, reply))
            self._arrived.notify_all()
        return SendResult(platform_message_id=f"m{len(self.sent)}")

    async def wait_sent(self, count: int, timeout: float = 10.0) -> list[SentMessage]:  # noqa: ASYNC109
        """Wait until at least ``count`` messages were sent; returns them all."""
        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.sent) >= count)

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            got = [m.text for m in self.sent]
            raise AssertionError(f"expected {count} sent messages within {timeout}s, got {got}") from None
        return list(self.sent)
