"""The Slack channel: Events API over HTTP or Socket Mode, replies in threads, mrkdwn.

Configured by ``[channels.slack.<account>]`` tables (see ``docs/channels/slack.md``);
each account is one bot token in one workspace, so several workspaces run side
by side. slack-sdk is imported only when a Slack account is configured: the
adapter module loads on the first ``factory`` call, not when the gateway loads
its built-in plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway import AdapterSpec, hookimpl

from .config import SlackConfig

if TYPE_CHECKING:
    from .adapter import SlackAdapter

__all__ = ["SlackAdapter", "SlackConfig"]

SOULGATE_PLUGIN_API = "1.0"


def _build(account: str, config: SlackConfig) -> SlackAdapter:
    from .adapter import SlackAdapter

    return SlackAdapter(account, config)


def __getattr__(name: str) -> Any:
    if name == "SlackAdapter":  # lazily, for `from adapters.slack import SlackAdapter`
        from .adapter import SlackAdapter

        return SlackAdapter
    raise AttributeError(name)


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            channel="slack",
            factory=_build,
            config_model=SlackConfig,
            description="Slack: Events API (HTTP) or Socket Mode, threads, mrkdwn",
        )
    ]
