"""Microsoft Teams channel (Bot Framework), a built-in soulgate plugin.

``[channels.teams.<account>]`` configures one Azure Bot; see
docs/channels/teams.md. Registering the channel imports nothing but this
module: the config model loads when a ``[channels.teams.*]`` table is
validated, the adapter on the first ``factory`` call, and botbuilder (only in
``_botframework``, so moving to the Microsoft 365 Agents SDK touches that one
module) when the gateway binds an account at start, in every role (a
``--role worker`` gateway sends without starting it).

Besides the channel, the plugin implements ``soulgate_reply`` to carry the route
option ``reply_style`` (``"thread"`` or ``"top_level"``) onto replies in Teams
channels, since the adapter's ``send`` sees the reply but not the route.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from gateway import AdapterSpec, Envelope, Reply, Services, hookimpl

if TYPE_CHECKING:
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

# Public names and their submodules, imported on first access (see adapters/telegram).
_LAZY = {"STYLE_META": ".adapter", "TeamsAdapter": ".adapter", "TeamsConfig": ".config",
         "TeamsEndpoints": ".config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _config_model() -> type[TeamsConfig]:
    from .config import TeamsConfig

    return TeamsConfig


def adapter_spec(*, credentials_factory: Any = None) -> AdapterSpec:
    """The channel spec. ``credentials_factory`` (a botbuilder
    ``ServiceClientCredentialsFactory``) replaces the one the config implies; the
    built-in plugin passes None. Tests pass one that talks to a local fake."""

    def build(account: str, cfg: TeamsConfig) -> TeamsAdapter:
        from .adapter import TeamsAdapter

        return TeamsAdapter(account, cfg, credentials_factory=credentials_factory)

    return AdapterSpec(
        channel="teams",
        factory=build,
        config_loader=_config_model,
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
    from .adapter import STYLE_META  # here, so a gateway without Teams never imports the adapter

    return Reply(
        text=reply.text, attachments=reply.attachments, in_reply_to=reply.in_reply_to,
        meta={**reply.meta, STYLE_META: normalized},
    )
