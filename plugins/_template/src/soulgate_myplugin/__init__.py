"""myplugin: a soulgate plugin offering one skill, as a slash command and as an LLM tool.

Start here: rename what you like, keep the entry point in pyproject.toml in
step with the module, and read soulgate's docs/plugins.md for inbound
filters, reply transforms, config tables and channels.
"""

from __future__ import annotations

from typing import Any

from gateway import Command, CommandContext, Skill, Tool, ToolContext, hookimpl

__all__ = ["echo"]

#: the soulgate plugin API this plugin was written for; the gateway refuses to
#: load it when its own API is incompatible (another major version)
SOULGATE_PLUGIN_API = "1.0"


def echo(text: str) -> str:
    """The skill itself, kept apart from both front doors so it is easy to test."""
    text = text.strip()
    if not text:
        return "myplugin is here. Try `/myplugin hello`."
    return f"myplugin heard: {text}"


async def _command(ctx: CommandContext) -> str:
    # ctx.args is everything after "/myplugin "; the returned Markdown is the reply.
    return echo(ctx.args)


async def _tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    # args were produced by the model from the JSON schema below; the result
    # goes back to the model as JSON.
    return {"reply": echo(str(args.get("text", "")))}


@hookimpl
def soulgate_skills() -> list[Skill]:
    return [
        Command("myplugin", "echo a text back", _command, usage="TEXT"),
        Tool(
            "myplugin_echo",
            "Echo a text back, prefixed with 'myplugin heard:'.",
            _tool,
            parameters={
                "type": "object",
                "properties": {"text": {"type": "string", "description": "what to echo"}},
                "required": ["text"],
            },
        ),
    ]
