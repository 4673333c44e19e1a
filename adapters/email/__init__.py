"""The email channel: requests by mail (IMAP), answers as threaded replies (SMTP).

Each ``[channels.email.<account>]`` table is one mailbox. See
``docs/channels/email.md`` for the setup and every key. Registering the channel
imports nothing but this module: the config model loads when a
``[channels.email.*]`` table is validated, the adapter on the first ``factory``
call, and aioimaplib and aiosmtplib only when an account starts or sends.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway import AdapterSpec, hookimpl

if TYPE_CHECKING:
    from .adapter import EmailAdapter
    from .config import EmailConfig

__all__ = ["EmailAdapter", "EmailConfig", "soulgate_adapters"]

SOULGATE_PLUGIN_API = "1.0"

# Public names and their submodules, imported on first access (see adapters/telegram).
_LAZY = {"EmailAdapter": ".adapter", "EmailConfig": ".config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _config_model() -> type[EmailConfig]:
    from .config import EmailConfig

    return EmailConfig


def _build(account: str, config: EmailConfig) -> EmailAdapter:
    from .adapter import EmailAdapter

    return EmailAdapter(account, config)


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            channel="email",
            factory=_build,
            config_loader=_config_model,
            description="Email: IMAP (IDLE or polling) in, threaded SMTP replies out, loop protection",
        )
    ]
