"""SOUL agents: persona files, the LLM seam (litellm), tool calling, memory and accounting.

litellm is imported only by :mod:`agents.llm`, lazily and off the event loop;
importing this package does not import it.
"""

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
