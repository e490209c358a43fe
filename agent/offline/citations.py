"""Rendering an extractive answer: the quoted sentences with citation marks, their code and list items, then
the sources section."""

from __future__ import annotations

from collections.abc import Sequence

from agent.offline.messages import Document
from agent.offline.sentences import Sentence

NO_ANSWER_TEXT = "I could not find this in the documents."
"""The whole answer when the retrieved documents do not contain one."""

SOURCES_HEADER = "Sources:"
"""First line of the sources section that ends every extractive answer."""


def _cite(sentence: str, index: str) -> str:
    if sentence[-1] in ".!?" and not sentence.endswith("..."):
        return f"{sentence[:-1]} [{index}]{sentence[-1]}"
    return f"{sentence} [{index}]"


def _index_key(index: str) -> tuple[int, str]:
    return (int(index), "") if index.isdigit() else (1 << 30, index)


def render_answer(docs: Sequence[Document], sentences: list[Sentence], picked: list[int]) -> str:
    """Best passage first, reading order within each passage; citations, code blocks, then the sources."""
    # A list item quoted with its introduction's list is not quoted again on its own.
    intros = {(sentences[i].doc, sentences[i].position) for i in picked if sentences[i].items}
    picked = [i for i in picked if (sentences[i].doc, sentences[i].listed_under) not in intros]
    doc_order = list(dict.fromkeys(sentences[i].doc for i in picked))
    ordered = sorted(picked, key=lambda i: (doc_order.index(sentences[i].doc), sentences[i].position))
    paragraphs: list[str] = []
    line: list[str] = []
    shown: set[tuple[int, int]] = set()
    for n, i in enumerate(ordered):
        s = sentences[i]
        line.append(_cite(s.text, docs[s.doc].index))
        later = any((sentences[j].doc, sentences[j].unit) == (s.doc, s.unit) for j in ordered[n + 1 :])
        if s.example and not s.code and not later and (s.doc, s.unit) not in shown:
            # The example that follows the paragraph shows the answer in code: quote it after the paragraph.
            shown.add((s.doc, s.unit))
            paragraphs += [" ".join(line), f"```\n{s.example}\n```"]
            line = []
        elif s.code:
            paragraphs += [" ".join(line), f"```\n{s.code}\n```"]
            line = []
        elif s.items:
            paragraphs += [" ".join(line), "\n".join(f"- {item}" for item in s.items)]
            line = []
    if line:
        paragraphs.append(" ".join(line))
    cited = sorted(
        {docs[sentences[i].doc].index: docs[sentences[i].doc] for i in ordered}.values(),
        key=lambda d: _index_key(d.index),
    )
    lines = [
        f"[{d.index}] {d.source} — {d.heading}" if d.heading else f"[{d.index}] {d.source}" for d in cited
    ]
    return "\n\n".join(paragraphs) + "\n\n" + SOURCES_HEADER + "\n" + "\n".join(lines)
