"""A plugin author's test of an LLM tool, using only the shipped test kit (no soulgate internals)."""

from __future__ import annotations

import types
from typing import Any

from gateway import Tool, ToolContext, hookimpl
from gateway.testing import FakeLLM, GatewayFactory, ToolCall, ToolCalls, test_config
from gateway.testing.plugin import soulgate_model_config


async def _shout(ctx: ToolContext, args: dict[str, Any]) -> str:
    return str(args["text"]).upper()


@hookimpl
def soulgate_skills() -> list[Tool]:
    return [Tool("shout", "Shout the text back", _shout,
                 {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})]


async def test_agent_calls_my_tool_through_the_fake_llm(
    soulgate_gateway: GatewayFactory, soulgate_fake_llm: FakeLLM, tmp_path: Any
) -> None:
    soul = tmp_path / "assistant.md"
    soul.write_text("---\nname: assistant\nmodel: default\nskills: [shout]\n---\nYou shout when asked.\n")
    config = test_config({**soulgate_model_config(soulgate_fake_llm, "kit-model"), "agents": {"soul_dir": str(tmp_path)}})
    soulgate_fake_llm.enqueue(
        "kit-model", ToolCalls([ToolCall("shout", {"text": "hello"})]), "The tool said HELLO."
    )
    plugin = types.SimpleNamespace(soulgate_skills=soulgate_skills)
    async with soulgate_gateway(config=config, plugins=[("shouter", plugin)]) as h:
        # the first turn waits for litellm to import (seconds), hence the generous timeout
        assert await h.ask("please shout hello", timeout=90) == "The tool said HELLO."
    first, second = soulgate_fake_llm.requests[-2:]
    assert first.tool_names == ["shout"]
    tool_results = [m for m in second.messages if m.get("role") == "tool"]
    assert tool_results and "HELLO" in str(tool_results[0]["content"])
