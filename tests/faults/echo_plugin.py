"""Test-only plugin a gateway subprocess loads through ``plugins.modules``: answers every
message with ``echo: <text>``, so a test can tell which inbound message a reply answers."""

from __future__ import annotations

from gateway import Reply, Services, Turn, TurnResult, hookimpl

__all__ = ["EchoResponder", "soulgate_responder"]


class EchoResponder:
    name = "echo"

    async def respond(self, turn: Turn) -> TurnResult:
        return TurnResult(replies=[Reply(text=f"echo: {turn.envelope.text}")])


@hookimpl
def soulgate_responder(services: Services) -> EchoResponder:
    return EchoResponder()
