"""The default route: answers when no agent plugin does, saying which agent would answer.

The SOUL agents plugin overrides it through ``soulgate_responder`` (it is
registered ``trylast``, so any other responder wins).
"""

from __future__ import annotations

from gateway import Reply, Responder, Services, Turn, TurnResult, hookimpl

__all__ = ["PlaceholderResponder"]

SOULGATE_PLUGIN_API = "1.0"


class PlaceholderResponder:
    name = "default-route"

    async def respond(self, turn: Turn) -> TurnResult:
        text = (
            f"This message would be answered by the agent **{turn.route.agent}**, "
            "but no agent plugin is loaded. Commands work: send /help."
        )
        return TurnResult(replies=[Reply(text=text)])


@hookimpl(trylast=True)
def soulgate_responder(services: Services) -> Responder:
    return PlaceholderResponder()
