"""Separate what the sender wrote from the history their mail program appended.

Replies carry the whole thread below the new text (``On … wrote:`` plus
``>``-quoted lines, or Outlook's ``-----Original Message-----`` / ``From: …
Sent: …`` block) and usually a signature after ``-- ``. The agent already has
the thread as conversation history, so it sees only the new text; the full
original stays in the envelope's ``raw``. Heuristics, deliberately
conservative: when stripping would leave nothing, the text is kept whole.
"""

from __future__ import annotations

import re

__all__ = ["split_reply"]

# "On Mon, 3 Jun 2024 at 10:00, Alice <a@x> wrote:" and friends, possibly wrapped over two lines
_ATTRIBUTION = re.compile(
    r"^(on\b.{0,200}\bwrote:|am\b.{0,200}\bschrieb.{0,80}:|le\b.{0,200}\ba écrit\s?:"
    r"|el\b.{0,200}\bescribió:|op\b.{0,200}\bschreef.{0,80}:|.{0,200}(@|\d).{0,200}\b(wrote|schrieb):)\s*$",
    re.IGNORECASE,
)
_SEPARATORS = re.compile(
    r"^(-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|forwarded message)\s*-{2,}"
    r"|_{20,}|-{20,})\s*$",
    re.IGNORECASE,
)
_HEADER_BLOCK = re.compile(r"^\*?(from|von|de)\s?:\*?\s", re.IGNORECASE)
_HEADER_NEXT = re.compile(r"^\*?(sent|date|gesendet|datum|envoyé|to|an|subject|betreff)\s?:", re.IGNORECASE)
_MOBILE = re.compile(r"^(sent from my \w+|von meinem \w+ gesendet|get outlook for \w+)", re.IGNORECASE)


def _history_start(lines: list[str]) -> int | None:
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s.startswith(">"):
            continue
        joined = f"{s} {lines[i + 1].strip()}" if i + 1 < len(lines) else s
        if _SEPARATORS.match(s) or _ATTRIBUTION.match(s):
            return i
        if _ATTRIBUTION.match(joined) and i + 2 <= len(lines) and not _ATTRIBUTION.match(lines[i + 1].strip()):
            return i  # the attribution line wrapped by the sender's client
        if _HEADER_BLOCK.match(s) and any(_HEADER_NEXT.match(n.strip()) for n in lines[i + 1:i + 3]):
            return i  # Outlook: a header block introduces the forwarded/replied mail
    return None


def _signature_start(lines: list[str]) -> int | None:
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].rstrip("\r") in ("-- ", "--"):
            return i
    return None


def split_reply(text: str) -> tuple[str, str]:
    """``(new text, removed history and signature)``; the new text is never empty if text is not."""
    lines = text.replace("\r\n", "\n").split("\n")
    removed: list[str] = []
    cut = _history_start(lines)
    if cut is not None and any(ln.strip() for ln in lines[:cut]):
        removed = lines[cut:]
        lines = lines[:cut]
    # a block of quoted lines at the end (with the attribution usually already gone)
    end = len(lines)
    while end > 0 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(">")):
        end -= 1
    if end < len(lines) and any(ln.lstrip().startswith(">") for ln in lines[end:]) \
            and any(ln.strip() for ln in lines[:end]):
        removed = lines[end:] + removed
        lines = lines[:end]
    sig = _signature_start(lines)
    if sig is not None and any(ln.strip() for ln in lines[:sig]):
        removed = lines[sig:] + removed
        lines = lines[:sig]
    while lines and (not lines[-1].strip() or _MOBILE.match(lines[-1].strip())):
        if lines[-1].strip():
            removed.insert(0, lines[-1])
        lines.pop()
    new = "\n".join(lines).strip()
    if not new:
        return text.strip(), ""
    return new, "\n".join(removed).strip()
