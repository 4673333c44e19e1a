"""Markdown (what agents write) → Slack mrkdwn (what ``chat.postMessage`` shows).

mrkdwn is not Markdown: ``*bold*``, ``_italic_``, ``~strike~``, ``<url|label>``,
no headings, no tables, no fence languages, and only ``&``, ``<``, ``>`` are
escaped. We parse the Markdown with markdown-it-py (CommonMark plus
strikethrough and tables) and print the tree as mrkdwn, so emphasis, code and
links survive and nothing the model writes can become a Slack control
sequence: ``<!channel>`` or ``<@U123>`` in an answer is escaped text, never a
ping.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

__all__ = ["escape", "link", "to_mrkdwn"]

_PIPE = "\u2223"  # DIVIDES, a look-alike of "|"
_md = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])


def escape(text: str) -> str:
    """Slack's three control characters as entities (the only escaping mrkdwn has)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link(url: str, label: str) -> str:
    """``<url|label>``; ``label`` is already mrkdwn (escaped) text."""
    # "|" ends the URL part of a Slack link, so a label cannot carry one: use a look-alike.
    return "<" + escape(url) + "|" + label.replace("|", _PIPE) + ">"


def to_mrkdwn(markdown: str) -> str:
    """Render one Markdown text (a whole answer or one chunk of it) as mrkdwn."""
    if not markdown.strip():
        return ""
    root = SyntaxTreeNode(_md.parse(markdown))
    return _blocks(root.children, "\n\n").strip("\n")


def _blocks(nodes: list[SyntaxTreeNode], sep: str) -> str:
    return sep.join(out for out in (_block(n) for n in nodes) if out)


def _block(node: SyntaxTreeNode) -> str:
    kind = node.type
    if kind == "paragraph":
        return _inline_of(node)
    if kind == "heading":
        # No headings in mrkdwn: a bold line reads as one (nested bold would cancel it).
        text = _inline_of(node, bold=True).strip()
        return f"*{text}*" if text else ""
    if kind in ("bullet_list", "ordered_list"):
        return _list(node)
    if kind == "blockquote":
        inner = _blocks(node.children, "\n\n")
        return "\n".join(f">{' ' + line if line else ''}" for line in inner.split("\n"))
    if kind in ("fence", "code_block"):
        # mrkdwn has no fence language; the code itself is escaped like any text.
        return f"```\n{escape(node.content.rstrip(chr(10)))}\n```"
    if kind == "hr":
        return "———"
    if kind == "table":
        return _table(node)
    if kind == "html_block":
        return escape(node.content.rstrip("\n"))
    return _blocks(node.children, "\n\n") if node.children else escape(node.content)


def _list(node: SyntaxTreeNode) -> str:
    ordered = node.type == "ordered_list"
    number = int(node.attrs.get("start", 1) or 1) if ordered else 0
    lines: list[str] = []
    for item in node.children:
        marker = f"{number}. " if ordered else "• "
        number += 1
        body = _blocks(item.children, "\n") or ""
        pad = " " * len(marker)
        for i, line in enumerate(body.split("\n")):
            lines.append(marker + line if i == 0 else (pad + line if line else line))
    return "\n".join(lines)


def _table(node: SyntaxTreeNode) -> str:
    # Slack cannot draw tables: a monospaced block with padded columns keeps them readable.
    rows: list[list[str]] = []
    for section in node.children:  # thead, tbody
        for tr in section.children:
            rows.append([_plain(cell) for cell in tr.children])
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    cols = [max((len(r[i]) for r in rows if i < len(r)), default=0) for i in range(width)]
    out = []
    for n, row in enumerate(rows):
        out.append(" | ".join(cell.ljust(cols[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            out.append("-+-".join("-" * c for c in cols))
    return "```\n" + escape("\n".join(out)) + "\n```"


def _plain(node: SyntaxTreeNode) -> str:
    """The visible text of a node, without any markup (for table cells)."""
    if node.type in ("text", "code_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    return "".join(_plain(c) for c in node.children)


def _inline_of(node: SyntaxTreeNode, *, bold: bool = False) -> str:
    return "".join(_inline(child, bold) for child in node.children)


def _inline(node: SyntaxTreeNode, bold: bool) -> str:
    kind = node.type
    if kind == "inline":
        return _inline_of(node, bold=bold)
    if kind in ("text", "html_inline"):
        return escape(node.content)
    if kind in ("softbreak", "hardbreak"):
        return "\n"
    if kind == "code_inline":
        return f"`{escape(node.content)}`"
    if kind == "strong":
        inner = _inline_of(node, bold=True)
        return inner if bold else _wrap("*", inner)
    if kind == "em":
        return _wrap("_", _inline_of(node, bold=bold))
    if kind == "s":
        return _wrap("~", _inline_of(node, bold=bold))
    if kind in ("link", "image"):
        url = str(node.attrs.get("href") or node.attrs.get("src") or "")
        label = _inline_of(node, bold=bold).strip()
        if not url:
            return label
        if not label or label == escape(url):
            return f"<{escape(url)}>"
        return link(url, label)
    return _inline_of(node, bold=bold)


def _wrap(mark: str, inner: str) -> str:
    # Slack only sees a marker next to a non-space: move outer spaces outside it.
    core = inner.strip()
    if not core:
        return inner
    lead = inner[: len(inner) - len(inner.lstrip())]
    trail = inner[len(inner.rstrip()):]
    return f"{lead}{mark}{core}{mark}{trail}"
