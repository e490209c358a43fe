"""Sentence-aware chunking with whole-sentence overlap, split at Markdown headings first. Pure: no I/O."""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass
from typing import Any

# ATX headings ("## Title ##"), up to 3 spaces of indent, as CommonMark allows.
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


# Recorded in each document's manifest entry: an ingest re-chunks documents chunked by another version, so
# an upgrade that moves chunk boundaries reaches every document once (bump it when boundaries change).
CHUNKER_VERSION = 2


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


# A sentence ends at . ! or ? (closing quotes/brackets/emphasis may follow) before whitespace and a
# character that can start a sentence (not a lower-case letter: "e.g. this" goes on).
_SENTENCE_END = re.compile(r"[.!?][\"'\u2019\u201d)\]*_`]*(?=\s+(?![a-z\u00df-\u00ff])\S)")
_ABBREVIATIONS = (
    "e.g.",
    "i.e.",
    "etc.",
    "vs.",
    "cf.",
    "Dr.",
    "Mr.",
    "Mrs.",
    "Ms.",
    "St.",
    "No.",
    "Fig.",
    "approx.",
)
# Lines that start a block of their own: list items and quotes.
_ITEM = re.compile(r"^ {0,3}(?:[-*+]\s|\d{1,9}[.)]\s|>)")


def _units(text: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """(start char, end char, kind) of the pieces a chunk may start or end at, in text[start:end]: heading
    lines, whole fenced code blocks, list items / table rows, and sentences of paragraphs. Spans exclude
    surrounding whitespace; kind is "heading", "code" or "text"."""
    units: list[tuple[int, int, str]] = []
    para: list[tuple[int, int]] = []  # lines of the paragraph being gathered

    def flush() -> None:
        if not para:
            return
        a, b = para[0][0], para[-1][1]
        para.clear()
        _sentences(text, a, b, units)

    fence = ""
    code_start = 0
    pos = start
    for line in text[start:end].splitlines(keepends=True):
        body = line.rstrip("\r\n")
        line_start, line_end = pos, pos + len(body)
        pos += len(line)
        f = _FENCE.match(body)
        if fence:
            if f and f.group(1)[0] == fence[0] and len(f.group(1)) >= len(fence) and not body.strip(" `~"):
                fence = ""
                units.append((code_start, line_end, "code"))
            continue
        if f:
            flush()
            fence, code_start = f.group(1), line_start + len(body) - len(body.lstrip())
            continue
        if not body.strip():
            flush()
        elif _HEADING.match(body):
            flush()
            units.append((line_start + len(body) - len(body.lstrip()), line_end, "heading"))
        elif body.lstrip().startswith("|"):  # a table row is one unit, never cut at a "." inside a cell
            flush()
            units.append((line_start + len(body) - len(body.lstrip()), line_end, "text"))
        elif _ITEM.match(body):
            flush()
            para.append((line_start + len(body) - len(body.lstrip()), line_end))
        else:
            para.append((line_start + len(body) - len(body.lstrip()), line_end))
    if fence:  # an unclosed fence runs to the end of the section
        units.append((code_start, len(text[:end].rstrip()), "code"))
    flush()
    return [(a, b, k) for a, b, k in units if b > a]


def _sentences(text: str, a: int, b: int, out: list[tuple[int, int, str]]) -> None:
    """Append the sentence spans of the paragraph text[a:b]."""
    s = a
    for m in _SENTENCE_END.finditer(text, a, b):
        e = m.end()
        word = text[text.rfind(" ", s, m.start()) + 1 : m.start() + 1].lstrip("(\"'")
        if word in _ABBREVIATIONS or (len(word) == 2 and word[0].isupper()):  # "e.g. Foo", "J. Smith"
            continue
        out.append((s, e, "text"))
        s = e
        while s < b and text[s].isspace():
            s += 1
    if s < b:
        out.append((s, b, "text"))


def _split_long(
    lo: int, hi: int, kind: str, max_tokens: int, offsets: list[tuple[int, int]], text: str
) -> list[tuple[int, int, str]]:
    """Token ranges of at most max_tokens covering [lo, hi): a unit too long for one chunk. Code is cut at
    a line end when it can be, prose at whitespace (so "3.14" or "index-scan" stays whole)."""

    def gap(t: int) -> str:  # the text between tokens t-1 and t
        return text[offsets[t - 1][1] : offsets[t][0]]

    pieces: list[tuple[int, int, str]] = []
    start = lo
    while start < hi:
        end = min(start + max_tokens, hi)
        if end < hi:
            cut = next((t for t in range(end, start, -1) if "\n" in gap(t)), None) if kind == "code" else None
            if cut is None:
                cut = next((t for t in range(end, start, -1) if gap(t)), end)
            end = cut
        pieces.append((start, end, kind))
        start = end
    return pieces


def chunk_text(text: str, *, max_tokens: int = 200, overlap: int = 40, tokenizer: Any = None) -> list[Chunk]:
    """Split text into chunks of at most max_tokens tokens that start and end at sentence boundaries.

    Each Markdown section is chunked on its own, so no chunk straddles a heading. A section is cut into
    units (its heading line, whole fenced code blocks, list items and table rows, and the sentences of its
    paragraphs) and consecutive units are packed into chunks; the next chunk repeats the last whole
    sentences of the previous one, at most `overlap` tokens of them. Only a unit longer than max_tokens on
    its own is cut inside (code at a line end, prose at a word boundary). Chunk text is cut from the
    original string by the tokenizer's offsets, so it is verbatim source text.
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
    starts = [a for a, _ in offsets]

    sections = _sections(text)
    ends = [s for s, _ in sections[1:]] + [len(text)]
    chunks: list[Chunk] = []
    for (begin, heading), finish in zip(sections, ends, strict=True):
        units: list[tuple[int, int, str]] = []  # token ranges
        for a, b, kind in _units(text, begin, finish):
            lo, hi = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
            if hi <= lo:
                continue  # nothing the tokenizer keeps
            if hi - lo > max_tokens:
                units += _split_long(lo, hi, kind, max_tokens, offsets, text)
            else:
                units.append((lo, hi, kind))
        i = 0
        while i < len(units):
            j = i  # the chunk is units[i..j]
            while j + 1 < len(units) and units[j + 1][1] - units[i][0] <= max_tokens:
                j += 1
            lo, hi = units[i][0], units[j][1]
            chunks.append(
                Chunk(
                    text=text[offsets[lo][0] : offsets[hi - 1][1]],
                    index=len(chunks),
                    start_token=lo,
                    end_token=hi,
                    heading=heading,
                )
            )
            if j + 1 >= len(units):
                break
            # Overlap: the trailing whole sentences of this chunk, at most `overlap` tokens, and never so many
            # that the next unit no longer fits beside them.
            k = j + 1
            while (
                k - 1 > i
                and units[k - 1][2] == "text"
                and hi - units[k - 1][0] <= overlap
                and units[j + 1][1] - units[k - 1][0] <= max_tokens
            ):
                k -= 1
            i = k
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
