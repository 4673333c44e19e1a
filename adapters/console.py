"""The console channel: talk to the gateway from a terminal or a pipe (``soulgate chat``).

It goes through the same durable pipeline as every other channel: each line
is admitted to the inbox, dispatched, and the reply is delivered by a
delivery worker calling :meth:`ConsoleAdapter.send`.
"""

from __future__ import annotations

import asyncio
import getpass
import uuid
from collections.abc import Callable

from gateway import (
    Adapter,
    AdapterContext,
    AdapterSpec,
    AdmitResult,
    Conversation,
    Envelope,
    Reply,
    ReplyAddress,
    Sender,
    SendResult,
    hookimpl,
)

__all__ = ["ConsoleAdapter"]

SOULGATE_PLUGIN_API = "1.0"


class ConsoleAdapter(Adapter):
    channel = "console"

    def __init__(
        self,
        account: str = "local",
        *,
        user: str | None = None,
        output: Callable[[str], None] = print,
    ) -> None:
        super().__init__(account)
        self.user = user or _whoami()
        self.output = output
        self.delivered = asyncio.Queue[str]()
        self._ctx: AdapterContext | None = None

    async def start(self, ctx: AdapterContext) -> None:
        self._ctx = ctx

    async def submit(self, text: str) -> AdmitResult:
        """Admit one line typed by the user."""
        if self._ctx is None:
            raise RuntimeError("console adapter is not started")
        conversation = Conversation(id=self.user, kind="direct", title="console")
        env = Envelope(
            channel=self.channel,
            account=self.account,
            external_id=str(uuid.uuid4()),
            conversation=conversation,
            sender=Sender(id=self.user, display_name=self.user, handle=self.user),
            text=text,
            addressed=True,
            reply_to=ReplyAddress(self.channel, self.account, {"user": self.user}),
        )
        return await self._ctx.admit(env)

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        self.output(reply.text)
        self.delivered.put_nowait(reply.text)
        return SendResult(platform_message_id=str(uuid.uuid4()))

    def status(self) -> dict[str, str]:
        return {"user": self.user}


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # containers without a passwd entry
        return "console-user"


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            channel="console",
            factory=lambda account, _cfg: ConsoleAdapter(account),
            description="Terminal / stdin channel used by `soulgate chat`",
        )
    ]
