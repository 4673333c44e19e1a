"""The http channel: an OpenAI-compatible API (``/v1/chat/completions``, ``/v1/models``).

Each ``[channels.http.<account>]`` table is one client system with its own API
keys; each SOUL agent is a "model". Requests go through the same durable
pipeline as every platform message. See ``docs/channels/http.md``. Registering
the channel imports nothing but this module: the config model loads when a
``[channels.http.*]`` table is validated, the adapter on the first ``factory`` call.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway import AdapterSpec, hookimpl

if TYPE_CHECKING:
    from .adapter import HttpAdapter
    from .config import HttpChannelConfig

__all__ = ["HttpAdapter", "HttpChannelConfig", "soulgate_adapters"]

SOULGATE_PLUGIN_API = "1.0"

# Public names and their submodules, imported on first access (see adapters/telegram).
_LAZY = {"HttpAdapter": ".adapter", "HttpChannelConfig": ".config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _config_model() -> type[HttpChannelConfig]:
    from .config import HttpChannelConfig

    return HttpChannelConfig


def _build(account: str, config: HttpChannelConfig) -> HttpAdapter:
    from .adapter import HttpAdapter

    return HttpAdapter(account, config)


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            channel="http",
            factory=_build,
            config_loader=_config_model,
            description="OpenAI-compatible API: /v1/chat/completions (streaming too) and /v1/models",
        )
    ]
