"""The Telegram channel (aiogram's Bot API client), registered like any third-party adapter.

Each ``[channels.telegram.<account>]`` table is one bot. See
``docs/channels/telegram.md`` for the setup and every key. aiogram is imported
only when a Telegram bot is configured (its import takes seconds): the adapter
module loads on the first ``factory`` call, not when the gateway loads its
built-in plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway import AdapterSpec, hookimpl

from .config import TelegramConfig

if TYPE_CHECKING:
    from .adapter import TelegramAdapter

__all__ = ["TelegramAdapter", "TelegramConfig", "markdown_to_html", "render_chunks", "soulgate_adapters"]

SOULGATE_PLUGIN_API = "1.0"


def _build(account: str, config: TelegramConfig) -> TelegramAdapter:
    from .adapter import TelegramAdapter

    return TelegramAdapter(account, config)


def __getattr__(name: str) -> Any:
    # lazily, so `from adapters.telegram import TelegramAdapter` still works
    if name == "TelegramAdapter":
        from .adapter import TelegramAdapter

        return TelegramAdapter
    if name in ("markdown_to_html", "render_chunks"):
        from . import render

        return getattr(render, name)
    raise AttributeError(name)


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            channel="telegram",
            factory=_build,
            config_model=TelegramConfig,
            description="Telegram bots: long polling or webhook, groups, forum topics, media",
        )
    ]
