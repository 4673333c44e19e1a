"""The email channel: requests by mail (IMAP), answers as threaded replies (SMTP).

Each ``[channels.email.<account>]`` table is one mailbox. See
``docs/channels/email.md`` for the setup and every key. aioimaplib and
aiosmtplib are imported only when an account starts or sends, so a gateway
without email accounts starts without them.
"""

from __future__ import annotations

from gateway import AdapterSpec, hookimpl

from .adapter import EmailAdapter
from .config import EmailConfig

__all__ = ["EmailAdapter", "EmailConfig", "soulgate_adapters"]

SOULGATE_PLUGIN_API = "1.0"


def _build(account: str, config: EmailConfig) -> EmailAdapter:
    return EmailAdapter(account, config)


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [
        AdapterSpec(
            channel="email",
            factory=_build,
            config_model=EmailConfig,
            description="Email: IMAP (IDLE or polling) in, threaded SMTP replies out, loop protection",
        )
    ]
