"""A plugin whose responder answers at once with the message's text (bench/scaleout.py).

Loaded by ``soulgate run`` through ``[plugins] modules = ["bench._echo_responder"]``
(with the repository on PYTHONPATH). It wins over the SOUL agents (``tryfirst``),
so a turn costs the gateway's pipeline and nothing else: no LLM call.
"""

from __future__ import annotations

from gateway import Reply, Responder, Services, Turn, TurnResult, hookimpl

__all__ = ["EchoResponder"]

SOULGATE_PLUGIN_API = "1.0"


class EchoResponder:
    name = "bench-echo"

    async def respond(self, turn: Turn) -> TurnResult:
        return TurnResult(replies=[Reply(text=f"echo: {turn.envelope.text}")])


@hookimpl(tryfirst=True)
def soulgate_responder(services: Services) -> Responder:
    return EchoResponder()
