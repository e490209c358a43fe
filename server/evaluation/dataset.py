"""Labelled question sets (JSONL, evals/README.md): loading, validation, and the fact matcher."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# An expected fact: alternatives, any of which may match; an alternative is a phrase, a list of phrases that
# must all appear, or "re:<pattern>" (case-insensitive, on the normalised text).
Expected = list[str | list[str]]


@dataclass(frozen=True)
class Turn:
    """One scored question: the first turn of an item or one of its follow-ups."""

    item_id: str
    turn: int
    question: str
    answerable: bool
    sources: tuple[str, ...] = ()
    expected: Expected = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.item_id if self.turn == 0 else f"{self.item_id}+{self.turn}"


@dataclass(frozen=True)
class Item:
    """A conversation: its first question and follow-ups, asked in order on one thread."""

    id: str
    turns: tuple[Turn, ...]


def _turn(item_id: str, n: int, raw: dict[str, Any], where: str) -> Turn:
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    answerable = raw.get("answerable", True)
    if not isinstance(answerable, bool):
        raise ValueError(f"{where}: 'answerable' must be true or false")
    sources = raw.get("sources") or []
    expected = raw.get("expected") or []
    if answerable:
        if not sources or not all(isinstance(s, str) and s for s in sources):
            raise ValueError(f"{where}: an answerable question needs 'sources' (non-empty strings)")
        if not expected:
            raise ValueError(f"{where}: an answerable question needs 'expected' phrasings")
        for alt in expected:
            phrases = alt if isinstance(alt, list) else [alt]
            if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
                raise ValueError(f"{where}: 'expected' holds strings or lists of strings")
            for p in phrases:
                if p.startswith("re:"):
                    re.compile(p[3:])
    return Turn(item_id, n, question.strip(), answerable, tuple(sources), list(expected))


def load_set(path: str | Path) -> list[Item]:
    """Parse a question set; a malformed line is a ValueError naming the file and line."""
    items: list[Item] = []
    seen: set[str] = set()
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: a line must be a JSON object")
        item_id = str(raw.get("id") or f"q{lineno}")
        if item_id in seen:
            raise ValueError(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        followups = raw.get("followups") or []
        if not isinstance(followups, list):
            raise ValueError(f"{where}: 'followups' must be a list")
        turns = [_turn(item_id, 0, raw, where)]
        turns += [_turn(item_id, i, f, f"{where} follow-up {i}") for i, f in enumerate(followups, start=1)]
        items.append(Item(item_id, tuple(turns)))
    if not items:
        raise ValueError(f"{path}: no questions")
    return items


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})


def normalise(text: str) -> str:
    """Lower-case, typographic quotes straightened, backticks and asterisks dropped, whitespace collapsed."""
    text = re.sub(r"[`*]", "", text.translate(_QUOTES))
    return " ".join(text.lower().split())


def _bounded(p: str) -> re.Pattern[str]:
    """The phrase, not inside a longer word or number ("5 s" is not in "15 seconds")."""
    head = r"(?<![a-z0-9])" if p[:1].isalnum() else ""
    tail = r"(?![a-z0-9])" if p[-1:].isalnum() else ""
    return re.compile(head + re.escape(p) + tail)


def _phrase_in(phrase: str, norm: str, squashed: str) -> bool:
    if phrase.startswith("re:"):
        return re.search(phrase[3:], norm, re.IGNORECASE) is not None
    p = normalise(phrase)
    return bool(_bounded(p).search(norm) or _bounded(p.replace(" ", "")).search(squashed))


def fact_present(expected: Expected, text: str) -> bool:
    """Whether any alternative of the expected fact appears in the text (see evals/README.md)."""
    norm = normalise(text)
    squashed = norm.replace(" ", "")
    for alt in expected:
        phrases = alt if isinstance(alt, list) else [alt]
        if all(_phrase_in(p, norm, squashed) for p in phrases):
            return True
    return False


def source_matches(patterns: tuple[str, ...], source: str, title: str = "") -> bool:
    """Whether a retrieved passage's source label (or title) contains one of the acceptable sources."""
    return any(p in source or (title and p in title) for p in patterns)
