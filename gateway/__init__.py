"""soulgate's public API: everything a plugin or adapter needs is importable from here.

The wiring (:class:`gateway.runtime.Gateway`), storage and agents are not part
of this surface; plugins reach them only through :class:`Services`.
"""

from .adapter import (
    TYPING_SHOWN,
    Adapter,
    AdapterContext,
    AdapterSpec,
    AdmitResult,
    DeliveryPolicy,
    RateLimit,
    SendResult,
)
from .envelope import (
    Attachment,
    Conversation,
    ConversationKind,
    Envelope,
    Reply,
    ReplyAddress,
    Segment,
    Sender,
    new_id,
)
from .errors import (
    ConfigError,
    DeliveryError,
    GatewayError,
    OutcomeUnknown,
    PermanentDeliveryError,
    PluginError,
    RetryAfter,
    TransientDeliveryError,
)
from .hookspecs import hookimpl
from .plugins import PLUGIN_API_VERSION
from .render import split_markdown, utf16_len
from .services import Services
from .skills import Command, CommandContext, CommandResult, Skill, Tool, ToolContext
from .turn import AuditEvent, HistoryEntry, Responder, Route, Turn, TurnResult

__version__ = "0.1.0"

__all__ = [
    "PLUGIN_API_VERSION",
    "TYPING_SHOWN",
    "Adapter",
    "AdapterContext",
    "AdapterSpec",
    "AdmitResult",
    "Attachment",
    "AuditEvent",
    "Command",
    "CommandContext",
    "CommandResult",
    "ConfigError",
    "Conversation",
    "ConversationKind",
    "DeliveryError",
    "DeliveryPolicy",
    "Envelope",
    "GatewayError",
    "HistoryEntry",
    "OutcomeUnknown",
    "PermanentDeliveryError",
    "PluginError",
    "RateLimit",
    "Reply",
    "ReplyAddress",
    "Responder",
    "RetryAfter",
    "Route",
    "Segment",
    "SendResult",
    "Sender",
    "Services",
    "Skill",
    "Tool",
    "ToolContext",
    "TransientDeliveryError",
    "Turn",
    "TurnResult",
    "__version__",
    "hookimpl",
    "new_id",
    "split_markdown",
    "utf16_len",
]
