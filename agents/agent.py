"""One agent turn: assemble the prompt, call the model, run the tools it asks for, answer.

The model only ever sees, and can only ever run, the tools its SOUL file
allows: a call to any other name (a hallucination or a prompt injection) gets
an error tool result, as do arguments that are not a JSON object or that do
not match the tool's schema. The loop is bounded by the SOUL's ``max_steps``.
Every tool call and result is audited; every LLM call becomes an
``agent_runs`` row, committed with the turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway import AuditEvent, HistoryEntry, Reply, Tool, ToolContext, Turn, TurnResult

from .llm import LLM, LLMUnavailable, describe_reason, runs_from_attempts
from .memory import Memory
from .soul import Soul

__all__ = ["allowed_tools", "bounded_history", "build_system_prompt", "estimate_tokens", "run_turn"]

log = logging.getLogger("soulgate.agents")

MAX_TOOL_RESULT_CHARS = 8000
_DISPATCH_HISTORY = 50  # messages the dispatcher puts in Turn.history
_AUDIT_CHARS = 500


def estimate_tokens(text: str) -> int:
    """About four characters a token, plus a little per message. A real tokenizer would
    download its tables on first use, which an air-gapped gateway cannot do."""
    return len(text) // 4 + 4


def allowed_tools(soul: Soul, tools: Mapping[str, tuple[str, Tool]]) -> dict[str, tuple[str, Tool]]:
    """The tools a SOUL's ``skills`` allow: named one by one, or every tool of a named plugin."""
    allow = set(soul.skills)
    return {name: pt for name, pt in tools.items() if name in allow or pt[0] in allow}


def bounded_history(history: Sequence[HistoryEntry], turns: int, tokens: int) -> list[dict[str, str]]:
    """The newest ``turns`` user turns (with their answers) that fit in ``tokens``."""
    kept: list[HistoryEntry] = []
    users, budget = 0, tokens
    for entry in reversed(history):
        if entry.role not in ("user", "assistant") or entry.meta.get("error"):
            continue  # our own error replies are not part of the conversation
        if entry.role == "user" and users >= turns:
            break
        cost = estimate_tokens(entry.content)
        if cost > budget:
            break
        budget -= cost
        kept.append(entry)
        users += entry.role == "user"
    kept.reverse()
    while kept and kept[0].role == "assistant":
        kept.pop(0)  # an answer whose question no longer fits
    return [{"role": e.role, "content": e.content} for e in kept]


def build_system_prompt(soul: Soul, turn: Turn, memories: Sequence[Mapping[str, Any]]) -> str:
    env = turn.envelope
    parts = [soul.persona]
    if soul.agents_md:
        parts.append("## Operating instructions\n\n" + soul.agents_md)
    if soul.user_md:
        parts.append("## About the user\n\n" + soul.user_md)
    where = {"direct": "a direct conversation", "group": "a group conversation",
             "channel": "a channel"}.get(env.conversation.kind, "a conversation")
    title = f" ({env.conversation.title})" if env.conversation.title else ""
    who = env.sender.display_name or env.sender.handle or env.sender.id
    parts.append(
        "## This conversation\n\n"
        f"- Channel: {env.channel}, {where}{title}.\n"
        f"- You are talking with: {who}.\n"
        f"- Today's date (UTC): {datetime.now(UTC):%Y-%m-%d}.\n"
        "- Answer in Markdown."
    )
    if memories:
        lines = "\n".join(f"- {m['content']}" for m in memories)
        parts.append("## What you remember about this user (from earlier conversations)\n\n" + lines)
    return "\n\n".join(p for p in parts if p.strip())


def _tool_spec(tool: Tool) -> dict[str, Any]:
    return {"type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters}}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


def _error(message: str) -> str:
    return json.dumps({"error": message})


class _TurnRun:
    """The state of one turn's tool loop."""

    def __init__(self, soul: Soul, turn: Turn, llm: LLM, tools: dict[str, tuple[str, Tool]],
                 tool_timeout: float) -> None:
        self.soul, self.turn, self.llm, self.tools = soul, turn, llm, tools
        self.tool_timeout = tool_timeout
        self.audit: list[AuditEvent] = []
        self.runs: list[dict[str, Any]] = []

    def result(self, text: str, *, error: bool = False, model: str | None = None) -> TurnResult:
        meta: dict[str, Any] = {"agent": self.soul.name}
        if model:
            meta["model"] = model
        if error:
            meta["error"] = True
        return TurnResult(replies=[Reply(text=text, meta=dict(meta))],
                          history=[HistoryEntry("assistant", text, meta)], audit=self.audit, runs=self.runs)

    async def call_tool(self, name: str, raw_args: str, step: int) -> str:
        agent = self.soul.name
        found = self.tools.get(name)
        if found is None:
            self.audit.append(AuditEvent("tool_rejected", {
                "agent": agent, "tool": name, "step": step, "arguments": _clip(raw_args, _AUDIT_CHARS),
                "reason": "not allowed for this agent"}))
            available = ", ".join(sorted(self.tools)) or "none"
            return _error(f"tool {name!r} is not available to you (available tools: {available})")
        plugin, tool = found
        detail: dict[str, Any] = {"agent": agent, "tool": name, "step": step,
                                  "arguments": _clip(raw_args, _AUDIT_CHARS)}
        problem: str | None
        try:
            args = json.loads(raw_args or "{}")
        except json.JSONDecodeError as exc:
            args, problem = None, f"the arguments are not valid JSON ({exc.msg} at position {exc.pos})"
        else:
            problem = None if isinstance(args, dict) else "the arguments must be a JSON object"
        if problem is None:
            # Imported on the first tool call (or preloaded by the agents plugin when a model
            # is configured): a start need not pay for it.
            import jsonschema

            try:
                jsonschema.validate(args, tool.parameters)
            except jsonschema.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "arguments"
                problem = f"invalid arguments: {where}: {exc.message}"
            except jsonschema.SchemaError:
                log.warning("tool %s of plugin %s has an invalid JSON schema; not validating", name, plugin)
        if problem is not None:
            self.audit.append(AuditEvent("tool_call", {**detail, "ok": False, "error": problem}, plugin))
            return _error(problem + "; call the tool again with corrected arguments")
        ctx = ToolContext(envelope=self.turn.envelope, services=self.turn.services, plugin=plugin, agent=agent)
        started = time.perf_counter()
        try:
            value = await asyncio.wait_for(tool.handler(ctx, args), self.tool_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            log.warning("tool %s (plugin %s) failed: %s", name, plugin, err)
            self.audit.append(AuditEvent("tool_call", {
                **detail, "ok": False, "error": _clip(err, _AUDIT_CHARS),
                "ms": round((time.perf_counter() - started) * 1000, 1)}, plugin))
            return _error(f"the tool failed: {_clip(err, 300)}")
        text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
        self.audit.append(AuditEvent("tool_call", {
            **detail, "ok": True, "result": _clip(text, _AUDIT_CHARS),
            "ms": round((time.perf_counter() - started) * 1000, 1)}, plugin))
        return _clip(text, MAX_TOOL_RESULT_CHARS)

    def unavailable(self, exc: LLMUnavailable, step: int) -> TurnResult:
        self.runs.extend(runs_from_attempts(self.soul.name, exc.attempts, step=step))
        self.audit.append(AuditEvent("llm_unavailable", {
            "agent": self.soul.name, "step": step,
            "attempts": [{"model": a.model, "reason": a.reason, "error": a.error} for a in exc.attempts]}))
        summary = "; ".join(f"{a.model}: {describe_reason(a.reason)}" for a in exc.attempts) or "no model"
        if any(a.reason == "context_window" for a in exc.attempts):
            text = ("Sorry, this conversation has become too long for the language model. "
                    "Send /reset to start over.")
        elif exc.retryable:
            text = (f"Sorry, I can't answer right now: no language model is reachable ({summary}). "
                    "Please try again in a little while.")
        else:
            text = (f"Sorry, I can't answer: the language model refused the request ({summary}). "
                    "The operator can find the details in the audit log.")
        return self.result(text, error=True)


async def run_turn(
    soul: Soul, turn: Turn, *, llm: LLM, memory: Memory | None, tool_timeout: float = 30.0
) -> TurnResult:
    """Answer ``turn.envelope`` as ``soul``."""
    env = turn.envelope
    run = _TurnRun(soul, turn, llm, allowed_tools(soul, turn.services.tools()), tool_timeout)
    memories: list[dict[str, Any]] = []
    if memory is not None and soul.memory.recall > 0:
        try:
            memories = await memory.recall(env, env.text, soul.memory.recall, min_score=soul.memory.min_score,
                                           agent=soul.name, runs=run.runs)
        except Exception:  # recall is a help, not a requirement for answering
            log.exception("memory recall failed for agent %s", soul.name)
    history: Sequence[HistoryEntry] = turn.history
    if len(history) >= _DISPATCH_HISTORY and soul.memory.history_turns * 2 > len(history):
        # the pipeline hands over its newest 50 messages; this SOUL asked for more turns
        history = await turn.services.history(env.conversation_key, soul.memory.history_turns * 3)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": build_system_prompt(soul, turn, memories)},
        *bounded_history(history, soul.memory.history_turns, soul.memory.history_tokens),
        {"role": "user", "content": env.text},
    ]
    specs = [_tool_spec(tool) for _plugin, tool in run.tools.values()]
    chain = soul.chain()
    for step in range(1, soul.max_steps + 1):
        try:
            done = await llm.complete(chain, messages, tools=specs or None,
                                      temperature=soul.temperature, max_tokens=soul.max_tokens)
        except LLMUnavailable as exc:
            return run.unavailable(exc, step)
        run.runs.extend(runs_from_attempts(soul.name, done.attempts, step=step))
        if not done.tool_calls:
            text = (done.content or "").strip() or "(The model gave an empty answer.)"
            return run.result(text, model=done.model)
        if step == soul.max_steps:
            run.audit.append(AuditEvent("tool_steps_exhausted", {
                "agent": soul.name, "steps": step, "requested": [c.name for c in done.tool_calls]}))
            text = (done.content or "").strip() or (
                f"Sorry, I could not finish: I used all {soul.max_steps} steps I may take with tools. "
                "Please try again, perhaps with a simpler request.")
            return run.result(text, model=done.model)
        messages.append({
            "role": "assistant",
            "content": done.content,
            "tool_calls": [
                {"id": c.id, "type": "function",
                 # a provider may reject a history that carries the model's own malformed JSON
                 "function": {"name": c.name, "arguments": c.arguments if _is_json_object(c.arguments) else "{}"}}
                for c in done.tool_calls
            ],
        })
        for call in done.tool_calls:
            content = await run.call_tool(call.name, call.arguments, step)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
    raise AssertionError("unreachable: the loop returns at its last step")


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text or "{}"), dict)
    except json.JSONDecodeError:
        return False
