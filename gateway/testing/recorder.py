"""A responder for tests: it echoes (or runs a given function) and keeps every turn it saw."""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable
from typing import Any

from ..envelope import Envelope, Reply
from ..hookspecs import hookimpl
from ..turn import Turn, TurnResult

__all__ = ["RecordingResponder"]


class RecordingResponder:
    """Register it with ``plugins=[("recorder", r.plugin())]``; ``turns`` lists what it answered."""

    name = "recorder"

    def __init__(self, respond: Callable[[Turn], Awaitable[TurnResult]] | None = None) -> None:
        self.turns: list[Turn] = []
        self._respond = respond

    def echo_text(self, turn: Turn) -> str:
        """The default answer; subclasses change its shape."""
        return f"echo: {turn.envelope.text}"

    async def respond(self, turn: Turn) -> TurnResult:
        self.turns.append(turn)
        if self._respond is not None:
            return await self._respond(turn)
        return TurnResult(replies=[Reply(text=self.echo_text(turn))])

    @property
    def envelopes(self) -> list[Envelope]:
        return [t.envelope for t in self.turns]

    def plugin(self) -> types.SimpleNamespace:
        recorder = self

        @hookimpl
        def soulgate_responder(services: Any) -> Any:
            return recorder

        return types.SimpleNamespace(soulgate_responder=soulgate_responder)
