"""Markdown (what agents write) → Telegram HTML, in message-sized chunks.

We send HTML parse mode rather than MarkdownV2: MarkdownV2 rejects any stray
``.`` or ``-`` an LLM writes, while HTML needs only ``<``, ``>`` and ``&``
escaped. markdown-it-py parses the Markdown (CommonMark with tables and
strikethrough, raw HTML off so ``<tag>`` in an answer stays text); we walk its
tokens and emit only the tags Telegram supports: b, i, s, code, pre,
a href, blockquote. Everything else (headings, lists, rules, tables) becomes
plain text that reads well in a chat bubble.

Splitting happens on the Markdown (``gateway.split_markdown`` measuring UTF-16
units, so a code block cut in two is closed and reopened and no surrogate pair
is split); each piece is rendered on its own, so every chunk carries complete
tags. Telegram counts the limit on the *visible* text after entity parsing,
which we check again on the rendered chunk.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from markdown_it.token import Token

from gateway import split_markdown, utf16_len

__all__ = ["TEXT_LIMIT", "Chunk", "markdown_to_html", "render_chunks", "visible_text"]

TEXT_LIMIT = 4096  # UTF-16 code units of visible text per message
_SAFE_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_LANG = re.compile(r"^[A-Za-z0-9_+#.-]{1,32}$")
_TAG = re.compile(r"<[^>]*>")

_md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def _esc(text: str) -> str:
    # Telegram needs only these three; quotes matter inside attribute values only.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(text: str) -> str:
    return _esc(text).replace('"', "&quot;")


def visible_text(rendered: str) -> str:
    """The text a user sees for an HTML message (what Telegram counts against the limit)."""
    return html.unescape(_TAG.sub("", rendered))


@dataclass
class _List:
    ordered: bool
    next_number: int
    depth: int


@dataclass
class _Writer:
    parts: list[str] = field(default_factory=list)
    lists: list[_List] = field(default_factory=list)
    quote_depth: int = 0
    item_start: bool = False  # just wrote a list marker: the item's first block follows inline

    def text(self) -> str:
        return "".join(self.parts)

    def block_gap(self, tight: bool = False) -> None:
        """Separate a new block from what came before: a blank line, or one newline in lists."""
        if self.item_start:
            self.item_start = False
            return
        current = self.text()
        if not current or current.endswith(("<blockquote>",)):
            return
        stripped = current.rstrip(" ")
        want = "\n" if tight or self.lists else "\n\n"
        have = len(stripped) - len(stripped.rstrip("\n"))
        if have < len(want):
            self.parts.append(want[have:])

    def indent(self) -> str:
        return "   " * max(0, len(self.lists) - 1)


def markdown_to_html(markdown: str) -> str:
    """Render Markdown as Telegram HTML (balanced tags, only supported ones)."""
    w = _Writer()
    tokens = _md.parse(markdown)
    i = 0
    while i < len(tokens):
        i = _block(tokens, i, w)
    return w.text().strip("\n")


def _block(tokens: Sequence[Token], i: int, w: _Writer) -> int:
    tok = tokens[i]
    kind = tok.type
    if kind == "paragraph_open":
        w.block_gap(tight=tok.hidden)
    elif kind == "heading_open":
        w.block_gap()
        w.parts.append("<b>")
    elif kind == "heading_close":
        w.parts.append("</b>")
    elif kind == "inline":
        w.parts.append(_inline(tok.children or []))
    elif kind in ("bullet_list_open", "ordered_list_open"):
        if not w.lists:
            w.block_gap()
        start = int(tok.attrGet("start") or 1) if kind == "ordered_list_open" else 0
        w.lists.append(_List(kind == "ordered_list_open", start, len(w.lists)))
    elif kind in ("bullet_list_close", "ordered_list_close"):
        w.lists.pop()
        w.item_start = False
    elif kind == "list_item_open":
        current = w.text()
        if current and not current.endswith("\n"):
            w.parts.append("\n")
        lst = w.lists[-1]
        marker = f"{lst.next_number}. " if lst.ordered else ("• " if lst.depth == 0 else "◦ ")
        lst.next_number += 1
        w.parts.append(w.indent() + marker)
        w.item_start = True
    elif kind == "list_item_close":
        w.item_start = False
    elif kind == "blockquote_open":
        w.block_gap()
        # Telegram does not nest quotes: only the outermost becomes a blockquote entity.
        if w.quote_depth == 0:
            w.parts.append("<blockquote>")
        w.quote_depth += 1
    elif kind == "blockquote_close":
        w.quote_depth -= 1
        if w.quote_depth == 0:
            _trim_newlines(w)
            w.parts.append("</blockquote>")
    elif kind in ("fence", "code_block"):
        w.block_gap()
        body = _esc(tok.content.rstrip("\n"))
        lang = tok.info.strip().split(maxsplit=1)[0] if tok.info.strip() else ""
        if lang and _LANG.match(lang):
            w.parts.append(f'<pre><code class="language-{_attr(lang)}">{body}</code></pre>')
        else:
            w.parts.append(f"<pre>{body}</pre>")
    elif kind == "hr":
        w.block_gap()
        w.parts.append("———")
    elif kind == "table_open":
        w.block_gap()
        return _table(tokens, i, w)
    elif kind == "html_block":  # only with html enabled; kept as text to be safe
        w.block_gap()
        w.parts.append(_esc(tok.content.rstrip("\n")))
    return i + 1


def _trim_newlines(w: _Writer) -> None:
    text = w.text()
    trimmed = text.rstrip("\n")
    if trimmed != text:
        w.parts[:] = [trimmed]


def _inline(children: Sequence[Token]) -> str:
    out: list[str] = []
    link_open: list[bool] = []  # whether each open link became an <a> tag
    for tok in children:
        kind = tok.type
        if kind == "text":
            out.append(_esc(tok.content))
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "code_inline":
            out.append(f"<code>{_esc(tok.content)}</code>")
        elif kind == "strong_open":
            out.append("<b>")
        elif kind == "strong_close":
            out.append("</b>")
        elif kind == "em_open":
            out.append("<i>")
        elif kind == "em_close":
            out.append("</i>")
        elif kind == "s_open":
            out.append("<s>")
        elif kind == "s_close":
            out.append("</s>")
        elif kind == "link_open":
            href = str(tok.attrGet("href") or "")
            ok = href.startswith(_SAFE_SCHEMES) and not link_open
            link_open.append(ok)
            if ok:
                out.append(f'<a href="{_attr(href)}">')
        elif kind == "link_close":
            if link_open.pop():
                out.append("</a>")
        elif kind == "image":
            src = str(tok.attrGet("src") or "")
            alt = tok.content or "image"
            if src.startswith(("http://", "https://")) and not link_open:
                out.append(f'<a href="{_attr(src)}">{_esc(alt)}</a>')
            else:
                out.append(_esc(alt))
        elif kind == "html_inline":
            out.append(_esc(tok.content))
        elif tok.children:
            out.append(_inline(tok.children))
    return "".join(out)


def _plain(children: Sequence[Token]) -> str:
    """Inline content without markup (table cells live inside <pre>, which holds no entities)."""
    parts: list[str] = []
    for tok in children:
        if tok.type in ("text", "code_inline"):
            parts.append(tok.content)
        elif tok.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif tok.type == "image":
            parts.append(tok.content)
    return "".join(parts)


def _table(tokens: Sequence[Token], i: int, w: _Writer) -> int:
    """A table as aligned monospace rows: Telegram has no table entity."""
    rows: list[list[str]] = []
    while tokens[i].type != "table_close":
        tok = tokens[i]
        if tok.type == "tr_open":
            rows.append([])
        elif tok.type == "inline" and rows:
            rows[-1].append(_plain(tok.children or []))
        i += 1
    widths = [max((len(r[c]) for r in rows if c < len(r)), default=0) for c in range(max(map(len, rows), default=0))]
    lines = [" | ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip() for row in rows]
    if len(lines) > 1:
        lines.insert(1, "-+-".join("-" * wd for wd in widths))
    w.parts.append(f"<pre>{_esc(chr(10).join(lines))}</pre>")
    return i + 1


@dataclass(frozen=True, slots=True)
class Chunk:
    """One message: its HTML and the Markdown it came from (the plain-text fallback)."""

    html: str
    markdown: str


def render_chunks(markdown: str, limit: int = TEXT_LIMIT) -> list[Chunk]:
    """Split ``markdown`` and render each piece; every chunk's visible text fits ``limit``."""
    out: list[Chunk] = []
    for piece in split_markdown(markdown, limit, measure=utf16_len):
        out.extend(_fit(piece, limit))
    return out


def _fit(piece: str, limit: int) -> list[Chunk]:
    rendered = markdown_to_html(piece)
    visible = visible_text(rendered)
    if not visible.strip():
        # e.g. an empty link or image: Telegram refuses an empty message, so send the source
        return [Chunk(html=_esc(piece), markdown=piece)] if piece.strip() else []
    size = utf16_len(visible)
    if size <= limit:
        return [Chunk(html=rendered, markdown=piece)]
    # Rendering made it longer (renumbered lists, padded tables): split smaller and retry.
    smaller = max(20, limit - (size - limit) - 32)
    if smaller >= utf16_len(piece):
        smaller = max(20, utf16_len(piece) // 2)
    pieces = split_markdown(piece, smaller, measure=utf16_len)
    if len(pieces) <= 1:  # cannot shrink further: send the Markdown itself as plain text
        return [Chunk(html=_esc(p), markdown=p) for p in split_markdown(piece, limit, measure=utf16_len)]
    out: list[Chunk] = []
    for p in pieces:
        out.extend(_fit(p, limit))
    return out
