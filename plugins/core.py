"""Built-in commands: /help, /status, /reset, /usage, /whoami."""

from __future__ import annotations

from gateway import Command, CommandContext, Skill, hookimpl

__all__: list[str] = []

SOULGATE_PLUGIN_API = "1.0"


async def _help(ctx: CommandContext) -> str:
    lines = ["**Commands**"]
    for _plugin, cmd in ctx.services.commands():
        if cmd.hidden:
            continue
        usage = f" {cmd.usage}" if cmd.usage else ""
        lines.append(f"- `/{cmd.name}{usage}` — {cmd.description}")
    lines.append("")
    lines.append("Anything else you write goes to the agent.")
    return "\n".join(lines)


async def _status(ctx: CommandContext) -> str:
    st = await ctx.services.status()
    up = int(st["uptime_seconds"])
    channels = ", ".join(f"{a['channel']}/{a['account']}" for a in st["adapters"]) or "none"
    inbox, outbox = st["queues"]["inbox"], st["queues"]["outbox"]
    return "\n".join([
        f"**soulgate** `{st['instance']}` up {up // 3600}h {up % 3600 // 60}m {up % 60}s",
        f"- channels: {channels}",
        f"- inbox: {inbox['pending']} pending, {inbox['claimed']} in progress",
        f"- outbox: {outbox['pending']} pending, {outbox['dead']} dead-lettered",
        f"- database: {'ok' if st['database']['ok'] else 'unreachable'}",
    ])


async def _usage(ctx: CommandContext) -> str:
    t = (await ctx.services.store.runs.totals(conversation_key=ctx.envelope.conversation_key))["all"]
    if not t["calls"]:
        return "No language model has been used in this conversation yet."
    cost = f"${t['cost_usd']:.4f}" if t["cost_usd"] is not None else "unknown"
    if t["cost_usd"] is not None and t["calls_without_cost"]:
        cost += f" (+ {t['calls_without_cost']} calls to models without known prices)"
    failed = f", {t['failures']} failed" if t["failures"] else ""
    return "\n".join([
        "**Usage in this conversation**",
        f"- LLM calls: {t['calls']}{failed}",
        f"- tokens: {t['input_tokens']} in, {t['output_tokens']} out",
        f"- cost: {cost}",
    ])


async def _reset(ctx: CommandContext) -> str:
    n = await ctx.services.forget_history(ctx.envelope.conversation_key)
    return f"Forgot this conversation's history ({n} messages)."


def _md(text: str) -> str:
    # Names come from the platform user: keep their Markdown from formatting the answer.
    return "".join("\\" + c if c in "\\`*_[]<>#|~" else c for c in text)


async def _whoami(ctx: CommandContext) -> str:
    env = ctx.envelope
    who = _md(env.sender.display_name or env.sender.id)
    if env.sender.handle and env.sender.handle != env.sender.display_name:
        who += f" (@{_md(env.sender.handle)})"
    conv = env.conversation
    where = f"`{conv.id}` ({conv.kind}{', ' + _md(conv.title) if conv.title else ''})"
    lines = [
        f"**You are** {who}, id `{env.sender.id}`",
        f"- channel: {env.channel}, account `{env.account}`",
        f"- conversation: {where}" + (f", thread `{env.thread}`" if env.thread else ""),
        f"- conversation key: `{env.conversation_key}`",
    ]
    return "\n".join(lines)


@hookimpl
def soulgate_skills() -> list[Skill]:
    return [
        Command("help", "list the commands", _help),
        Command("status", "uptime, channels and queue depths", _status),
        Command("reset", "forget this conversation's history", _reset),
        Command("whoami", "who and where the gateway thinks you are", _whoami),
        Command("usage", "tokens and cost of this conversation's LLM calls", _usage),
    ]
