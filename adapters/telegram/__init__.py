"""The Telegram channel (aiogram's Bot API client), registered like any third-party adapter.

Each ``[channels.telegram.<account>]`` table is one bot. See
``docs/channels/telegram.md`` for the setup and every key.
"""

from __future__ import annotations

from gateway import AdapterSpec, hookimpl

from .adapter import TelegramAdapter
from .config import TelegramConfig
from .render import markdown_to_html, render_chunks

__all__ = ["TelegramAdapter", "TelegramConfig", "markdown_to_html", "render_chunks", "soulgate_adapters"]

SOULGATE_PLUGIN_API = "1.0"


def _build(account: str, config: TelegramConfig) -> TelegramAdapter:
    return TelegramAdapter(account, config)


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
