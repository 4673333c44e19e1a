"""The Telegram channel (aiogram's Bot API client), registered like any third-party adapter.

Each ``[channels.telegram.<account>]`` table is one bot. See
``docs/channels/telegram.md`` for the setup and every key. Registering the
channel imports nothing but this module: the config model loads when a
``[channels.telegram.*]`` table is validated, and the adapter with aiogram (its
import takes seconds) on the first ``factory`` call.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway import AdapterSpec, hookimpl

if TYPE_CHECKING:
    from .adapter import TelegramAdapter
    from .config import TelegramConfig
    from .render import markdown_to_html, render_chunks

__all__ = ["TelegramAdapter", "TelegramConfig", "markdown_to_html", "render_chunks", "soulgate_adapters"]

SOULGATE_PLUGIN_API = "1.0"

# Public names and the submodule each lives in, imported on first access so that
# `from adapters.telegram import TelegramConfig` works without a start paying for it.
_LAZY = {"TelegramAdapter": ".adapter", "TelegramConfig": ".config", "markdown_to_html": ".render",
         "render_chunks": ".render"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _config_model() -> type[TelegramConfig]:
    from .config import TelegramConfig

    return TelegramConfig


def _build(account: str, config: TelegramConfig) -> TelegramAdapter:
    from .adapter import TelegramAdapter

    return TelegramAdapter(account, config)


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            channel="telegram",
            factory=_build,
            config_loader=_config_model,
            description="Telegram bots: long polling or webhook, groups, forum topics, media",
        )
    ]
