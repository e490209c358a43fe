"""Passages as quotable text: paragraphs, list items, table rows and code blocks, then whole sentences.

Only whole sentences can be quoted: not a chunk's cut-off start or end, not a question. A sentence that ends in
":" carries the code block or the list items it introduces; a short code example right after a paragraph is
attached to that paragraph's sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.offline.messages import Document
from agent.offline.text import CITATION_RE, SENTENCE_SPLIT_RE, WORD_RE, stems

_HEADING_RE = re.compile(r"^#{1,6}\s+(.*?)\s*#*$")

_BULLET_RE = re.compile(r"^(?:[-*+]|\d+[.)])\s+(.*)$")

_RULE_RE = re.compile(r"^(?:-{3,}|\*{3,}|_{3,})$")

_FENCE_RE = re.compile(r"^(?:```|~~~)")

_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "no.", "dr.", "mr.", "ms.")

EXAMPLE_MAX_LINES = 15
"""Longest code example quoted after the paragraph it follows (longer code is a listing, not an example)."""

INTRO_MAX_ITEMS = 6
"""Most list items quoted with the sentence that introduces them."""

ITEM_MAX_WORDS = 12
"""A list item without a full stop and longer than this is a sentence that a chunk boundary cut off."""

_INLINED_SNIPPET_RE = re.compile(r":\s+`[^`]+`$")
"""A sentence that ends in the one-line snippet it introduced ("Enter the following command: `$ pip install
click`"): `passage_units` inlines a one-line code block after a sentence ending in ":"."""

_TERMINAL_RE = re.compile(r"[.!?:][)\"'`*_\]]*$")

CONCRETE_RE = re.compile(
    r"`[^`]+`|\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b|\b\w+=\S|\b[\w.]+\(\)|(?<![\w-])--[a-z][\w-]*|\\[a-z]\b"
    r"|\b[\w-]+\.(?:py|toml|cfg|ini|json|ya?ml|txt)\b|\b[A-Z][a-z0-9]+[A-Z]\w*"
)
"""Something a reader can type: code in backticks, an identifier (`auto_envvar_prefix`), `name=value`, a call
(`isolated_filesystem()`), a `--flag`, an escape (`\\b`), a file name (`setup.py`), a CamelCase class name (`CliRunner`)."""


@dataclass
class Unit:
    kind: str
    """prose | item (a list item or table row) | code"""
    text: str


@dataclass
class Sentence:
    doc: int
    position: int
    text: str
    kind: str
    stems: list[str] = field(default_factory=list)
    code: str = ""
    """The code block that follows this sentence, when the sentence introduces it ("...:")."""
    items: list[str] = field(default_factory=list)
    """The list items that follow this sentence, when the sentence introduces them ("...:")."""
    unit: int = -1
    """The paragraph (unit) of its passage the sentence belongs to."""
    inline_code: bool = False
    """The sentence ends in the one-line command it introduces (`passage_units` inlines a one-line code block
    after a sentence ending in ":"): it introduces code like a sentence that carries a code block."""
    listed_under: int = -1
    """For a list item that is also one of the items its introduction quotes: the introduction's position."""
    example: str = ""
    """The code example right after the sentence's paragraph (at most `EXAMPLE_MAX_LINES` lines)."""


def _inline_cleanup(text: str) -> str:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def passage_units(text: str) -> list[Unit]:
    """Paragraphs, list items and code blocks of a Markdown passage, without headings, rules or bullets."""
    units: list[Unit] = []
    current: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if current:
            units.append(Unit("prose", " ".join(current)))
            current.clear()

    lines = text.splitlines()
    fences = [i for i, raw in enumerate(lines) if _FENCE_RE.match(raw.strip())]
    if len(fences) % 2 and lines[fences[0]].strip() in ("```", "~~~"):
        # An odd number of fences whose first one is bare: the chunk starts inside a code block (an opening
        # fence usually names its language), so what comes before that fence is code, not prose.
        lines = lines[fences[0] + 1 :]
    for raw in lines:
        line = raw.strip()
        if _FENCE_RE.match(line):
            if code is None:
                flush()
                code = []
            else:
                # A one-line snippet introduced by "...:" reads naturally inline; longer code stays a block.
                if units and units[-1].kind != "code" and units[-1].text.endswith(":") and len(code) == 1:
                    units[-1].text += " `" + code[0] + "`"
                elif code:
                    units.append(Unit("code", "\n".join(code)))
                code = None
            continue
        if code is not None:
            if line:
                code.append(raw.rstrip())
            continue
        if not line or _RULE_RE.match(line) or _HEADING_RE.match(line):
            flush()
            continue
        line = re.sub(r"^(?:>\s?)+", "", line)
        if line.startswith("|"):
            flush()
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(re.fullmatch(r":?-*:?", c) for c in cells):
                units.append(Unit("item", ", ".join(c for c in cells if c)))
            continue
        bullet = _BULLET_RE.match(line)
        if bullet:
            flush()
            units.append(Unit("item", bullet.group(1)))
            continue
        if units and units[-1].kind == "item" and not current and raw[:1].isspace():
            units[-1].text += " " + line  # a list item's continuation line
            continue
        current.append(line)
    flush()
    out = []
    for unit in units:
        clean = unit.text if unit.kind == "code" else _inline_cleanup(unit.text)
        if clean:
            out.append(Unit(unit.kind, clean))
    return out


def split_sentences(unit: str) -> list[str]:
    out: list[str] = []
    for piece in SENTENCE_SPLIT_RE.split(unit):
        if out and (out[-1].casefold().endswith(_ABBREVIATIONS) or piece[:1].islower()):
            # An abbreviation, or a "!" or "?" inside a sentence ("print the string Aborted! to standard
            # error"): a sentence never starts in lower case.
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [s.strip() for s in out if s.strip()]


def _whole(text: str, kind: str, *, first: bool, last: bool) -> bool:
    """Whether a sentence can be quoted on its own: not a chunk's cut-off start or end, not a question."""
    if text.endswith("?"):
        return False  # a question restates a problem; it never answers one
    if first and text[0].islower():
        return False  # the chunk starts mid-sentence
    if text.endswith((",", ";", "-", "—", "(")):
        return False  # dangling: the rest was cut off
    if _TERMINAL_RE.search(text) or _INLINED_SNIPPET_RE.search(text):
        return True
    # A list item or table row needs no full stop, unless it is as long as a sentence (then it was cut off).
    return kind == "item" and not last and len(text.split()) <= ITEM_MAX_WORDS


def passage_sentences(docs: Sequence[Document]) -> list[Sentence]:
    """The whole sentences of the passages. A sentence that ends in ":" introduces what follows it: it takes
    the code block or the list items right after it, and without them (cut off by the chunk) it is dropped."""
    sentences: list[Sentence] = []
    for d, doc in enumerate(docs):
        position = 0
        intro: Sentence | None = None  # the last sentence, while it still takes what it introduces
        units = passage_units(doc.text)
        for u, unit in enumerate(units):
            if unit.kind == "code":
                if intro is not None and not intro.items:
                    intro.code = unit.text
                if u > 0 and units[u - 1].kind == "prose" and unit.text.count("\n") < EXAMPLE_MAX_LINES:
                    for sentence in sentences:
                        if sentence.doc == d and sentence.unit == u - 1:
                            sentence.example = unit.text
                intro = None
                position += 1
                continue
            if unit.kind == "item" and intro is not None and len(intro.items) < INTRO_MAX_ITEMS:
                item = CITATION_RE.sub("", unit.text)
                intro.items.append(item)
                # An item that is a sentence answers on its own too ("If an Abort exception is raised, print
                # ..."): quotable alone, and not repeated when its introduction is quoted with the list.
                if len(WORD_RE.findall(item.casefold())) > ITEM_MAX_WORDS and _TERMINAL_RE.search(item):
                    listed = Sentence(d, position, item, "item", stems(item), unit=u)
                    listed.listed_under = intro.position
                    sentences.append(listed)
                position += 1
                continue
            intro = None
            pieces = split_sentences(CITATION_RE.sub("", unit.text))
            for p, text in enumerate(pieces):
                first = u == 0 and p == 0
                last = u == len(units) - 1 and p == len(pieces) - 1
                if len(WORD_RE.findall(text.casefold())) >= 3 and _whole(
                    text, unit.kind, first=first, last=last
                ):
                    sentence = Sentence(d, position, text, unit.kind, stems(text), unit=u)
                    sentence.inline_code = _INLINED_SNIPPET_RE.search(text) is not None
                    sentences.append(sentence)
                    intro = sentence if text.endswith(":") and p == len(pieces) - 1 else None
                position += 1
    # An introduction whose continuation the chunk cut off says nothing on its own, unless it names what to
    # type itself ("All you have to do is to pass chain=True to your multicommand:").
    return [
        s for s in sentences if not s.text.endswith(":") or s.code or s.items or CONCRETE_RE.search(s.text)
    ]


def document_sentences(docs: Sequence[Document]) -> list[str]:
    """The whole sentences of `docs` (what an answer may quote)."""
    return [s.text for s in passage_sentences(docs)]
