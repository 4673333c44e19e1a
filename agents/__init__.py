"""SOUL agents: persona files, the LLM seam (litellm), tool calling, memory and accounting.

litellm is imported only by :mod:`agents.llm`, lazily and off the event loop;
importing this package does not import it. Nor does it import the submodules:
the gateway loads ``agents.soul_agents`` as a plugin at every start, and that
must not pay for what only a turn needs (tool calling with jsonschema, SOUL
parsing with YAML). The names below load from their module on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import run_turn
    from .llm import LLM, Attempt, Completion, LLMUnavailable
    from .memory import Memory, MemoryInputError, user_key
    from .soul import MemorySettings, Soul, SoulError, check_soul, load_soul_dir, parse_soul
    from .soul_agents import NO_MODEL_TEXT, AgentResponder, check_config

__all__ = [
    "LLM",
    "NO_MODEL_TEXT",
    "AgentResponder",
    "Attempt",
    "Completion",
    "LLMUnavailable",
    "Memory",
    "MemoryInputError",
    "MemorySettings",
    "Soul",
    "SoulError",
    "check_config",
    "check_soul",
    "load_soul_dir",
    "parse_soul",
    "run_turn",
    "user_key",
]

_LAZY = {
    "run_turn": ".agent",
    "LLM": ".llm", "Attempt": ".llm", "Completion": ".llm", "LLMUnavailable": ".llm",
    "Memory": ".memory", "MemoryInputError": ".memory", "user_key": ".memory",
    "MemorySettings": ".soul", "Soul": ".soul", "SoulError": ".soul", "check_soul": ".soul",
    "load_soul_dir": ".soul", "parse_soul": ".soul",
    "NO_MODEL_TEXT": ".soul_agents", "AgentResponder": ".soul_agents", "check_config": ".soul_agents",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
