"""The extractive answer: the passages' sentences that best match the question, cited, then the sources."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.offline.messages import Document
from agent.offline.text import SENTENCE_SPLIT_RE, WORD_RE, stems

NO_ANSWER_TEXT = "I could not find an answer to that in the knowledge base."
"""The whole answer when the retrieved documents do not contain one."""

SOURCES_HEADER = "Sources:"
"""First line of the sources section that ends every extractive answer."""

_HEADING_RE = re.compile(r"^#{1,6}\s+(.*?)\s*#*$")

_BULLET_RE = re.compile(r"^(?:[-*+]|\d+[.)])\s+(.*)$")

_RULE_RE = re.compile(r"^(?:-{3,}|\*{3,}|_{3,})$")

_FENCE_RE = re.compile(r"^(?:```|~~~)")

_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "no.", "dr.", "mr.", "ms.")


@dataclass
class _Sentence:
    doc: int
    position: int
    text: str
    stems: list[str] = field(default_factory=list)


def _inline_cleanup(text: str) -> str:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def _passage_units(text: str) -> list[str]:
    """Paragraphs and list items of a Markdown passage, without headings, fences or bullets."""
    units: list[str] = []
    current: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if current:
            units.append(" ".join(current))
            current.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if _FENCE_RE.match(line):
            if code is None:
                flush()
                code = []
            else:
                # A short snippet introduced by "...:" reads naturally inline; longer code is not prose.
                if units and units[-1].endswith(":") and 0 < len(code) <= 3:
                    units[-1] += " `" + "; ".join(code) + "`"
                code = None
            continue
        if code is not None:
            if line:
                code.append(line)
            continue
        if not line or _RULE_RE.match(line) or _HEADING_RE.match(line):
            flush()
            continue
        line = re.sub(r"^(?:>\s?)+", "", line)
        if line.startswith("|"):
            flush()
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(re.fullmatch(r":?-*:?", c) for c in cells):
                units.append(", ".join(c for c in cells if c))
            continue
        bullet = _BULLET_RE.match(line)
        if bullet:
            flush()
            line = bullet.group(1)
        current.append(line)
    flush()
    return [u for u in (_inline_cleanup(u) for u in units) if u]


def _split_sentences(unit: str) -> list[str]:
    out: list[str] = []
    for piece in SENTENCE_SPLIT_RE.split(unit):
        if out and out[-1].casefold().endswith(_ABBREVIATIONS):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [s.strip() for s in out if s.strip()]


def _sentences(docs: Sequence[Document]) -> list[_Sentence]:
    sentences = []
    for d, doc in enumerate(docs):
        position = 0
        for unit in _passage_units(doc.text):
            for text in _split_sentences(unit):
                if len(WORD_RE.findall(text.casefold())) >= 3:
                    sentences.append(_Sentence(d, position, text, stems(text)))
                position += 1
    return sentences


def _cite(sentence: str, index: str) -> str:
    if sentence[-1] in ".!?" and not sentence.endswith("..."):
        return f"{sentence[:-1]} [{index}]{sentence[-1]}"
    return f"{sentence} [{index}]"


def _index_key(index: str) -> tuple[int, str]:
    return (int(index), "") if index.isdigit() else (1 << 30, index)


def extractive_answer(question: str, docs: Sequence[Document], max_sentences: int) -> str:
    question_stems = stems(question)
    sentences = _sentences(docs)
    if not question_stems or not sentences:
        return NO_ANSWER_TEXT
    n = len(sentences)
    stem_sets = [set(s.stems) for s in sentences]
    idf: dict[str, float] = {}
    for stem in question_stems:
        df = sum(1 for words in stem_sets if stem in words)
        if df:
            idf[stem] = math.log(1 + n / df)

    def score(i: int, covered: dict[str, None]) -> float:
        gain = sum(
            idf[t] * (0.3 if t in covered else 1.0) for t in question_stems if t in idf and t in stem_sets[i]
        )
        return gain / math.pow(max(len(sentences[i].stems), 1), 0.25)

    # Greedy: the best sentence, then sentences that add a missing question term or score nearly as well.
    picked: list[int] = []
    covered: dict[str, None] = {}
    top = 0.0
    while len(picked) < max_sentences:
        best, best_score = None, 0.0
        for i in range(n):
            if i in picked or any(_near_duplicate(stem_sets[i], stem_sets[j]) for j in picked):
                continue
            s = score(i, covered)
            adds = any(t in idf and t in stem_sets[i] and t not in covered for t in question_stems)
            if picked and not adds and s < 0.5 * top:
                continue
            if s > best_score + 1e-12:
                best, best_score = i, s
        if best is None:
            break
        top = top or best_score
        picked.append(best)
        covered.update(dict.fromkeys(t for t in question_stems if t in stem_sets[best]))
    if not picked:
        return NO_ANSWER_TEXT

    # Best passage first, reading order within each passage.
    doc_order = list(dict.fromkeys(sentences[i].doc for i in picked))
    ordered = sorted(picked, key=lambda i: (doc_order.index(sentences[i].doc), sentences[i].position))
    body = " ".join(_cite(sentences[i].text, docs[sentences[i].doc].index) for i in ordered)
    cited = sorted(
        {docs[sentences[i].doc].index: docs[sentences[i].doc] for i in ordered}.values(),
        key=lambda d: _index_key(d.index),
    )
    lines = [
        f"[{d.index}] {d.source} — {d.heading}" if d.heading else f"[{d.index}] {d.source}" for d in cited
    ]
    return body + "\n\n" + SOURCES_HEADER + "\n" + "\n".join(lines)


def _near_duplicate(a: set[str], b: set[str]) -> bool:
    return bool(a and b) and len(a & b) / len(a | b) >= 0.6
