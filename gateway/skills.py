"""Skills a plugin offers: slash commands and LLM tools.

A plugin returns them from the ``soulgate_skills`` hook. Commands answer
``/name args`` before any agent sees the message; tools are offered to an agent's
model when its SOUL file allows them by name.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .envelope import Envelope, Reply

if TYPE_CHECKING:
    from .services import Services

__all__ = ["Command", "CommandContext", "CommandResult", "Skill", "Tool", "ToolContext"]

CommandResult = str | Reply | None
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a command handler sees: the message, its arguments, and the gateway services."""

    envelope: Envelope
    command: str
    args: str
    services: Services
    plugin: str


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool handler sees besides its arguments."""

    envelope: Envelope
    services: Services
    plugin: str
    agent: str


@dataclass(frozen=True, slots=True)
class Command:
    """A slash command: ``/name args``. The handler returns Markdown text, a Reply, or None."""

    name: str
    description: str
    handler: Callable[[CommandContext], Awaitable[CommandResult]]
    usage: str = ""
    hidden: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"command name {self.name!r} must be lower-case letters, digits or _ "
                "(max 32) and start with a letter"
            )


@dataclass(frozen=True, slots=True)
class Tool:
    """An LLM tool: a name, a description, JSON-schema parameters and an async handler.

    The handler's result is given back to the model as JSON (or as text if it
    is a string).
    """

    name: str
    description: str
    handler: Callable[[ToolContext, dict[str, Any]], Awaitable[Any]]
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    def __post_init__(self) -> None:
        if not re.match(r"^[a-zA-Z0-9_-]{1,64}$", self.name):
            raise ValueError(f"tool name {self.name!r} must match [a-zA-Z0-9_-]{{1,64}}")
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a JSON schema of type object")


Skill = Command | Tool
