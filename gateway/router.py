"""Routing: slash commands first, then the most specific ``[[routes]]`` entry."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .config import RouteConfig
from .envelope import Envelope
from .turn import Route

__all__ = ["parse_command", "resolve_route"]

_COMMAND = re.compile(r"^/([A-Za-z][A-Za-z0-9_]{0,31})(?:@(\S+))?(?:\s+(.*))?$", re.S)


def parse_command(text: str) -> tuple[str, str, str | None] | None:
    """``"/help@my_bot  x y"`` → ``("help", "x y", "my_bot")``; None if not a command."""
    m = _COMMAND.match(text.strip())
    if m is None:
        return None
    return m.group(1).lower(), (m.group(3) or "").strip(), m.group(2)


def _score(route: RouteConfig, env: Envelope) -> int | None:
    """How specific a matching route is (conversation > account > channel > default)."""
    if route.channel is not None and route.channel != env.channel:
        return None
    if route.account is not None and route.account != env.account:
        return None
    if route.conversation is not None and route.conversation not in (
        env.conversation.id, env.conversation_key
    ):
        return None
    if route.conversation is not None:
        return 3
    if route.account is not None:
        return 2
    if route.channel is not None:
        return 1
    return 0


def resolve_route(env: Envelope, routes: Sequence[RouteConfig], default_agent: str) -> Route:
    """The most specific matching route; ``env.agent`` (a channel that names the agent,
    such as the http channel's ``model``) replaces its agent but keeps its other settings."""
    best: tuple[int, int, RouteConfig] | None = None
    for index, route in enumerate(routes):
        score = _score(route, env)
        # the most specific wins; among equals, the first written wins
        if score is not None and (best is None or score > best[0]):
            best = (score, index, route)
    if best is None:
        return Route(agent=env.agent or default_agent)
    r = best[2]
    return Route(
        agent=env.agent or r.agent,
        require_mention=r.require_mention,
        allowed_senders=tuple(r.allowed_senders),
        options=dict(r.options),
    )
