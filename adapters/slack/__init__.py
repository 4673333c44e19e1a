"""The Slack channel: Events API over HTTP or Socket Mode, replies in threads, mrkdwn.

Configured by ``[channels.slack.<account>]`` tables (see ``docs/channels/slack.md``);
each account is one bot token in one workspace, so several workspaces run side
by side. Registering the channel imports nothing but this module: the config
model loads when a ``[channels.slack.*]`` table is validated, and the adapter
with slack-sdk on the first ``factory`` call.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway import AdapterSpec, hookimpl

if TYPE_CHECKING:
    from .adapter import SlackAdapter
    from .config import SlackConfig

__all__ = ["SlackAdapter", "SlackConfig", "soulgate_adapters"]

SOULGATE_PLUGIN_API = "1.0"

# Public names and their submodules, imported on first access (see adapters/telegram).
_LAZY = {"SlackAdapter": ".adapter", "SlackConfig": ".config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _config_model() -> type[SlackConfig]:
    from .config import SlackConfig

    return SlackConfig


def _build(account: str, config: SlackConfig) -> SlackAdapter:
    from .adapter import SlackAdapter

    return SlackAdapter(account, config)


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            channel="slack",
            factory=_build,
            config_loader=_config_model,
            description="Slack: Events API (HTTP) or Socket Mode, threads, mrkdwn",
        )
    ]
