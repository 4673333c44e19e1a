"""The http channel: an OpenAI-compatible API (``/v1/chat/completions``, ``/v1/models``).

Each ``[channels.http.<account>]`` table is one client system with its own API
keys; each SOUL agent is a "model". Requests go through the same durable
pipeline as every platform message. See ``docs/channels/http.md``. aiohttp's
server part is imported only when an account is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway import AdapterSpec, hookimpl

from .config import HttpChannelConfig

if TYPE_CHECKING:
    from .adapter import HttpAdapter

__all__ = ["HttpAdapter", "HttpChannelConfig", "soulgate_adapters"]

SOULGATE_PLUGIN_API = "1.0"


def _build(account: str, config: HttpChannelConfig) -> HttpAdapter:
    from .adapter import HttpAdapter

    return HttpAdapter(account, config)


def __getattr__(name: str) -> Any:
    if name == "HttpAdapter":  # lazily, so `from adapters.http import HttpAdapter` still works
        from .adapter import HttpAdapter

        return HttpAdapter
    raise AttributeError(name)


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            channel="http",
            factory=_build,
            config_model=HttpChannelConfig,
            description="OpenAI-compatible API: /v1/chat/completions (streaming too) and /v1/models",
        )
    ]
