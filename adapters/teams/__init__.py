"""Microsoft Teams channel (Bot Framework), a built-in soulgate plugin.

``[channels.teams.<account>]`` configures one Azure Bot; see
docs/channels/teams.md. botbuilder is imported only by ``_botframework``, and
only when an account starts, so moving to the Microsoft 365 Agents SDK touches
that one module.

Besides the channel, the plugin implements ``soulgate_reply`` to carry the route
option ``reply_style`` (``"thread"`` or ``"top_level"``) onto replies in Teams
channels, since the adapter's ``send`` sees the reply but not the route.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway import AdapterSpec, Envelope, Reply, Services, hookimpl

from .adapter import STYLE_META, TeamsAdapter
from .config import TeamsConfig, TeamsEndpoints

__all__ = [
    "STYLE_META",
    "TeamsAdapter",
    "TeamsConfig",
    "TeamsEndpoints",
    "adapter_spec",
    "soulgate_adapters",
    "soulgate_reply",
]

SOULGATE_PLUGIN_API = "1.0"
log = logging.getLogger("soulgate.adapters.teams")


def adapter_spec(*, credentials_factory: Any = None) -> AdapterSpec:
    """The channel spec. ``credentials_factory`` (a botbuilder
    ``ServiceClientCredentialsFactory``) replaces the one the config implies; the
    built-in plugin passes None. Tests pass one that talks to a local fake."""
    return AdapterSpec(
        channel="teams",
        factory=lambda account, cfg: TeamsAdapter(account, cfg, credentials_factory=credentials_factory),
        config_model=TeamsConfig,
        description="Microsoft Teams via Bot Framework (personal, group and channel conversations)",
    )


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [adapter_spec()]


@hookimpl
def soulgate_reply(reply: Reply, envelope: Envelope | None, services: Services) -> Reply | None:
    if envelope is None or envelope.channel != "teams" or envelope.conversation.kind != "channel":
        return None
    style = services.route(envelope).options.get("reply_style")
    if style is None:
        return None
    normalized = str(style).replace("-", "_")
    if normalized not in ("thread", "top_level"):
        log.warning("route option reply_style=%r is not 'thread' or 'top_level'; ignored", style)
        return None
    return Reply(
        text=reply.text, attachments=reply.attachments, in_reply_to=reply.in_reply_to,
        meta={**reply.meta, STYLE_META: normalized},
    )
