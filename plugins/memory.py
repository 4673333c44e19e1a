"""Long-term memory per user: ``/remember``, ``/recall``, ``/forget``, and the same as LLM tools.

The memory itself belongs to the SOUL agents plugin, which shares it as
``services.provided("memory")``; recall uses embeddings when
``[agents] embedding_model`` is set and full-text search otherwise. An agent may
use the tools when its SOUL file lists ``memory`` (this plugin) or the tool
names in ``skills``. Memories are per person and channel account: nobody can
read or delete another user's memories, whatever the model asks for.
"""

from __future__ import annotations

import re
from typing import Any

from gateway import Command, CommandContext, Services, Skill, Tool, ToolContext, hookimpl

__all__: list[str] = []

SOULGATE_PLUGIN_API = "1.0"

_UNAVAILABLE = "Long-term memory is not available (the SOUL agents plugin is not loaded)."
_IDS = re.compile(r"^#?\d+(?:[\s,]+#?\d+)*$")


def _memory(services: Services) -> Any:
    return services.provided("memory")


def _lines(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"- `#{r['id']}` {r['content']}" for r in rows)


async def _remember_cmd(ctx: CommandContext) -> str:
    memory = _memory(ctx.services)
    if memory is None:
        return _UNAVAILABLE
    if not ctx.args.strip():
        return "Usage: `/remember <a fact about you>`, e.g. `/remember I prefer answers in French`."
    try:
        memory_id, created = await memory.remember(ctx.envelope, ctx.args)
    except ValueError as exc:
        return f"Not stored: {exc}."
    return f"Remembered (`#{memory_id}`)." if created else f"I already remember that (`#{memory_id}`)."


async def _recall_cmd(ctx: CommandContext) -> str:
    memory = _memory(ctx.services)
    if memory is None:
        return _UNAVAILABLE
    query = ctx.args.strip()
    if not query:
        rows = await memory.recent(ctx.envelope, 20)
        if not rows:
            return "I don't remember anything about you yet. Teach me with `/remember <fact>`."
        return "**What I remember about you** (newest first):\n" + _lines(rows)
    rows = await memory.recall(ctx.envelope, query, 10)
    if not rows:
        return f"Nothing I remember matches “{query}”."
    return f"**Memories matching “{query}”** ({memory.describe()}):\n" + _lines(rows)


async def _forget_cmd(ctx: CommandContext) -> str:
    memory = _memory(ctx.services)
    if memory is None:
        return _UNAVAILABLE
    args = ctx.args.strip()
    if args.lower() == "all":
        n = await memory.forget_all(ctx.envelope)
        return f"Forgot everything I remembered about you ({n} memories)."
    if not _IDS.match(args):
        return ("Usage: `/forget <id> [<id> …]` (ids are shown by `/recall`) or `/forget all`. "
                "To forget this conversation's history instead, send /reset.")
    ids = [int(x) for x in re.findall(r"\d+", args)]
    n = await memory.forget(ctx.envelope, ids)
    return f"Forgot {n} of {len(ids)} memories." if n != len(ids) else f"Forgot {n} memor{'y' if n == 1 else 'ies'}."


async def _remember_tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    memory = _memory(ctx.services)
    if memory is None:
        return {"error": "memory is not available"}
    try:
        memory_id, created = await memory.remember(ctx.envelope, str(args["fact"]), agent=ctx.agent)
    except ValueError as exc:
        return {"error": str(exc)}
    return {"id": memory_id, "stored": created, "note": None if created else "already remembered"}


async def _recall_tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    memory = _memory(ctx.services)
    if memory is None:
        return {"error": "memory is not available"}
    rows = await memory.recall(ctx.envelope, str(args["query"]), int(args.get("limit", 5)), agent=ctx.agent)
    return {"memories": [{"id": r["id"], "fact": r["content"], "stored": r["created_at"]} for r in rows]}


async def _forget_tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    memory = _memory(ctx.services)
    if memory is None:
        return {"error": "memory is not available"}
    return {"forgotten": await memory.forget(ctx.envelope, [int(args["id"])])}


@hookimpl
def soulgate_skills() -> list[Skill]:
    return [
        Command("remember", "store a fact about you for later conversations", _remember_cmd, usage="<fact>"),
        Command("recall", "show what I remember about you (optionally matching a query)", _recall_cmd,
                usage="[query]"),
        Command("forget", "delete remembered facts by id, or all of them", _forget_cmd, usage="<id …> | all"),
        Tool(
            "remember",
            "Store a lasting fact about the user you are talking with (a preference, a name, a "
            "detail they asked you to keep) so you can recall it in later conversations.",
            _remember_tool,
            {"type": "object", "properties": {
                "fact": {"type": "string", "minLength": 1, "maxLength": 2000,
                         "description": "the fact, as a short self-contained sentence"}},
             "required": ["fact"], "additionalProperties": False},
        ),
        Tool(
            "recall",
            "Search the facts you stored earlier about the user you are talking with.",
            _recall_tool,
            {"type": "object", "properties": {
                "query": {"type": "string", "minLength": 1, "description": "what to look for"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 20}},
             "required": ["query"], "additionalProperties": False},
        ),
        Tool(
            "forget",
            "Delete one stored fact about the user by its id (as returned by recall).",
            _forget_tool,
            {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1}},
             "required": ["id"], "additionalProperties": False},
        ),
    ]
