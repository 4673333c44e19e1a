"""Splitting long Markdown answers into platform-sized chunks.

Every platform caps a message (Telegram 4096 UTF-16 units, Slack ~4000
characters, Teams ~80 KB). We split the Markdown *before* rendering it to the
platform's format, at the nicest boundary that fits: a paragraph, then a
line, then a space, then anywhere. A code block cut in two is closed at the
end of one chunk and reopened (same fence and language) at the start of the
next, so each chunk renders on its own.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["split_markdown", "utf16_len"]


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (what Telegram and Teams count): astral characters are 2."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _hard_split(text: str, limit: int, measure: Callable[[str], int]) -> tuple[str, str]:
    """The longest prefix of ``text`` that fits, cut at a space if there is one."""
    lo, hi = 1, len(text)
    while lo < hi:  # binary search on code points; never splits a surrogate pair
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    cut = lo
    space = text.rfind(" ", 0, cut)
    if space > cut // 2:
        cut = space + 1
    return text[:cut], text[cut:]


def split_markdown(text: str, limit: int, *, measure: Callable[[str], int] = len) -> list[str]:
    """Split ``text`` into chunks with ``measure(chunk) <= limit``, keeping code fences whole."""
    if limit < 20:
        raise ValueError("limit must be at least 20")
    if measure(text) <= limit:
        return [text] if text else []
    chunks: list[str] = []
    current: list[str] = []
    fence: str | None = None  # the opening fence line of the code block we are in
    last_break = -1  # index in `current` after which a paragraph ended

    def close(lines: list[str], open_fence: str | None) -> str:
        body = "\n".join(lines).strip("\n")
        return f"{body}\n```" if open_fence is not None else body

    def size(lines: list[str], open_fence: str | None) -> int:
        return measure(close(lines, open_fence))

    def flush(keep_from: int | None = None) -> None:
        nonlocal current, last_break
        if keep_from is None:
            emitted, rest = current, []
        else:
            emitted, rest = current[:keep_from], current[keep_from:]
        fence_at_cut = _fence_state(emitted, fence_before=chunk_fence[0])
        if "".join(emitted).strip():
            chunks.append(close(emitted, fence_at_cut))
        chunk_fence[0] = fence_at_cut
        current = ([fence_at_cut] if fence_at_cut is not None else []) + [r for r in rest]
        last_break = -1

    chunk_fence: list[str | None] = [None]  # fence open at the start of `current`
    pending = text.split("\n")
    while pending:
        line = pending.pop(0)
        stripped = line.strip()
        next_fence = fence
        if stripped.startswith("```"):
            next_fence = None if fence is not None else stripped
        candidate = [*current, line]
        if size(candidate, next_fence) <= limit:
            current, fence = candidate, next_fence
            if not stripped and fence is None:
                last_break = len(current)
            continue
        if current and "".join(current).strip() and (
            len(current) > (1 if chunk_fence[0] else 0)
        ):
            # Prefer the last paragraph break if it keeps at least half the chunk.
            if last_break > len(current) // 2 and fence is None:
                flush(last_break)
                fence = _fence_state(current, fence_before=chunk_fence[0])
            else:
                flush()
            pending.insert(0, line)
            continue
        # A single line longer than a whole chunk: cut it.
        prefix = "\n".join(current) + "\n" if current else ""
        room = limit - measure(prefix) - (4 if fence is not None else 0)
        head, tail = _hard_split(line, max(1, room), measure)
        current.append(head)
        flush()
        pending.insert(0, tail)
    if "".join(current).strip() and current != [chunk_fence[0]]:
        chunks.append(close(current, fence))
    return chunks


def _fence_state(lines: list[str], *, fence_before: str | None) -> str | None:
    fence = fence_before
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("```"):
            if i == 0 and fence_before is not None and s == fence_before:
                continue  # the reopened fence we put at the start of this chunk
            fence = None if fence is not None else s
    return fence
