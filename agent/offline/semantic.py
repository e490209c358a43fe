"""Meaning: similarity of texts through the embedding model the corpus was indexed with, and the thresholds.

The offline engine gets its embedder from whoever builds it (the summarize and critique nodes pass the
store's, the one retrieval embeds queries with); without one it falls back to word overlap. Embeddings are
L2-normalised by the bundled model, but the cosine is computed in full so any provider's vectors work.

The thresholds are calibrated for the bundled all-MiniLM-L6-v2 on question/sentence pairs (docs/offline.md
"Thresholds"): a sentence that answers a question scores well above `ANSWER_MIN_SIMILARITY`; sentences from
passages about something else stay below it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Protocol

from agent.offline.text import WORD_RE, stems
from memory.embeddings import get_tokenizer

ANSWER_MIN_SIMILARITY = 0.4
"""Below this, no sentence of the passages answers the question: the engine abstains (and the critic agrees)."""

FULL_ANSWER_SPAN = 0.2
"""The critic's answer strength grows from 0 at `ANSWER_MIN_SIMILARITY` to 1 this much above it."""

SUPPORTING_MARGIN = 0.1
"""A further sentence joins the answer when it scores within this margin of the best one (another passage,
another part of the answer)."""

GROUNDED_SIMILARITY = 0.8
"""A draft sentence at least this similar to some document sentence restates it (is grounded)."""

LEXICAL_WEIGHT = 0.05
"""Weight of the question's words a sentence shares (idf-weighted share, 0..1): a tie-break only."""

CUE_BONUS = 0.03
"""Bonus for a sentence that names a solution (an instruction, a setting, a command) or, for a question about
a quantity or a duration, states a number."""


class Embedder(Protocol):
    """What the engine needs of a LangChain `Embeddings`."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]: ...


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0 when either is zero)."""
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def similarities(embedder: Embedder, query: str, texts: Sequence[str]) -> list[float]:
    """Cosine similarity of `query` to each text, embedded in one batch."""
    if not texts:
        return []
    vectors = embedder.embed_documents([query, *texts])
    return [cosine(vectors[0], v) for v in vectors[1:]]


PREFIX_CHARS = 6
"""A salient word of this length or more is mentioned when a passage word starts with the same letters."""

_NAME_RE = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w-]*)")


def _common_word(word: str) -> bool:
    """A whole word of the bundled tokenizer's WordPiece vocabulary (about 20,000 everyday English words);
    product names, acronyms and jargon split into pieces."""
    return len(get_tokenizer().encode(word, add_special_tokens=False).ids) == 1


def salient_terms(question: str) -> list[str]:
    """The words that name what a question is about, so a passage that lacks them cannot answer it: names
    (capitalised inside the question: "MySQL", "Helm", "Teams"), hyphenated compounds ("two-factor") and
    words outside the common vocabulary ("liveness", "graphql")."""
    out: list[str] = []
    names = {m.group(1).casefold() for m in _NAME_RE.finditer(question.strip())}
    for raw in re.findall(r"[^\W_]+(?:-[^\W_]+)*", question):
        word = raw.casefold()
        if not stems(word) or word.isdigit():
            continue  # a stopword
        if "-" in word or word in names or not _common_word(word):
            out.append(word)
    return list(dict.fromkeys(out))


def absent_terms(question: str, texts: Sequence[str]) -> list[str]:
    """The question's salient terms that none of `texts` mentions (as a word, its stem, or a compound)."""
    joined = " ".join(texts).casefold()
    known = set(stems(joined))
    words = set(WORD_RE.findall(joined))
    prefixes = {w[:PREFIX_CHARS] for w in words if len(w) >= PREFIX_CHARS}
    missing = []
    for term in salient_terms(question):
        if "-" in term:
            present = term in joined or term.replace("-", " ") in joined or term.replace("-", "") in words
        else:
            # Same word, same stem, or (for a long word) the same first letters: "configure" / "configuration".
            present = term in words or set(stems(term)) <= known
            present = present or (len(term) >= PREFIX_CHARS and term[:PREFIX_CHARS] in prefixes)
        if not present:
            missing.append(term)
    return missing
