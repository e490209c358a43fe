"""Token-window chunking with overlap, split at Markdown headings first. Pure: no I/O."""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass
from typing import Any

# ATX headings ("## Title ##"), up to 3 spaces of indent, as CommonMark allows.
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass(frozen=True)
class Chunk:
    """A verbatim slice of the source: tokens [start_token, end_token) of the whole text."""

    text: str
    index: int
    start_token: int
    end_token: int
    heading: str  # heading path in force at the chunk start, e.g. "Operations > Scaling out"


def _headings(text: str) -> list[tuple[int, int, int, str]]:
    """(line start, line end, level, title) for every ATX heading outside fenced code."""
    found: list[tuple[int, int, int, str]] = []
    fence = ""
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        f = _FENCE.match(body)
        if fence:
            # A fence closes on the same character, at least as long as the opener.
            if f and f.group(1)[0] == fence[0] and len(f.group(1)) >= len(fence) and not body.strip(" `~"):
                fence = ""
        elif f:
            fence = f.group(1)
        else:
            m = _HEADING.match(body)
            if m:
                found.append((pos, pos + len(body), len(m.group(1)), (m.group(2) or "").strip()))
        pos += len(line)
    return found


def _sections(text: str) -> list[tuple[int, str]]:
    """(start char, heading path) of each section; the first starts at 0 with the path "" if no heading."""
    raw: list[tuple[int, int, str]] = [(0, 0, "")]  # (start, end of heading line, path)
    stack: list[tuple[int, str]] = []
    for start, line_end, level, title in _headings(text):
        while stack and stack[-1][0] >= level:
            stack.pop()
        if title:
            stack.append((level, title))
        path = " > ".join(t for _, t in stack)
        if start == 0:
            raw[0] = (0, line_end, path)
        else:
            raw.append((start, line_end, path))
    sections: list[tuple[int, str]] = []
    carry: int | None = None
    for i, (start, line_end, path) in enumerate(raw):
        begin = start if carry is None else carry
        nxt = raw[i + 1] if i + 1 < len(raw) else None
        # A heading with nothing under it but a sub-heading ("## Ops" then "### Scaling") would be a
        # heading-only chunk that matches queries and says nothing. Fold it into the child section:
        # the child's path already names it, so the heading info stays right.
        if nxt and path and nxt[2].startswith(path + " > ") and not text[line_end : nxt[0]].strip():
            if carry is None:
                carry = start
            continue
        sections.append((begin, path))
        carry = None
    return sections


def chunk_text(text: str, *, max_tokens: int = 200, overlap: int = 40, tokenizer: Any = None) -> list[Chunk]:
    """Split text into windows of at most max_tokens tokens, consecutive windows sharing `overlap` tokens.

    Each Markdown section is windowed on its own, so no chunk straddles a heading. Chunk text is cut
    from the original string by the tokenizer's offsets, so it is verbatim source text.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap must satisfy 0 <= overlap < max_tokens ({max_tokens}), got {overlap}")
    if not text or not text.strip():
        return []
    if tokenizer is None:
        from memory.embeddings import get_tokenizer

        tokenizer = get_tokenizer()

    # One encode of the whole text: token indices are document-wide and offsets index `text` directly.
    enc = tokenizer.encode(text, add_special_tokens=False)
    offsets: list[tuple[int, int]] = enc.offsets
    words: list[int | None] = enc.word_ids
    starts = [a for a, _ in offsets]

    sections = _sections(text)
    bounds = [bisect.bisect_left(starts, s) for s, _ in sections] + [len(offsets)]

    chunks: list[Chunk] = []
    for (_, heading), lo, hi in zip(sections, bounds, bounds[1:], strict=False):
        start = lo
        while start < hi:
            end = min(start + max_tokens, hi)
            # Don't end mid-word when we can help it: back off to the word's first token, as long as the
            # window still advances past the overlap. The next window starts `overlap` tokens back either way.
            if end < hi and words[end] is not None and words[end] == words[end - 1]:
                w = end - 1
                while w > start and words[w - 1] == words[end]:
                    w -= 1
                if w - start > overlap:
                    end = w
            chunks.append(
                Chunk(
                    text=text[offsets[start][0] : offsets[end - 1][1]],
                    index=len(chunks),
                    start_token=start,
                    end_token=end,
                    heading=heading,
                )
            )
            if end >= hi:
                break
            start = end - overlap
    return chunks


def title_of(text: str, fallback: str) -> str:
    """The first "# " heading of a Markdown text, or the fallback."""
    for _, _, level, title in _headings(text):
        if level == 1 and title:
            return title
    return fallback


def content_hash(text: str) -> str:
    """sha256 hex of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
