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
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from langchain_core.embeddings import Embeddings

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


TYPE_BONUS = 0.07
"""Bonus for a sentence of the kind the question asks for: an instruction or code for "how do I", a number
with its unit for "how long/how many", "X is ..." for "what is X" (half of it for a named setting or table
row when the question asks "which")."""

KIND_MARGIN = 0.2
"""A sentence of the kind the question asks for (code for a how-to, a number for how long) joins an answer
that has none when it scores within this margin of the best sentence."""

PARAMETER_PENALTY = 0.1
"""Taken off an API parameter line's score ("abort (bool) – if this is set to True ...") unless the question asks
which parameter or what an API accepts: the line describes one argument, not what happens or how to do it."""

HEADING_WEIGHT = 0.1
"""Weight of the similarity of the question to a sentence's section heading (its heading path): a sentence
under "Scaling out" is about scaling out even when it does not say so."""


class Embedder(Protocol):
    """What the engine needs of a LangChain `Embeddings`."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]: ...


EMBEDDING_CACHE_SIZE = 8192
"""Texts whose vectors an `EmbeddingCache` keeps (about 1.5 kB each for 384 dimensions)."""


class EmbeddingCache:
    """A bounded LRU of text -> vector for one embedder, shared by every turn of a graph.

    The answer and the critic embed the sentences of the same passages, and later turns retrieve many of the
    same passages again; with the cache each sentence is embedded once. Whoever builds the graph owns it
    (agent.toolbox.Toolbox), so there is no module state. Vectors of another embedder are never mixed in: the
    cache empties when it is asked for a different one.
    """

    def __init__(self, maxsize: int = EMBEDDING_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._vectors: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._owner: object | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._vectors)

    def wrap(self, embedder: Embedder) -> CachedEmbedder:
        """`embedder` with its `embed_documents` answered from this cache where it can be."""
        with self._lock:
            if self._owner is not embedder:
                self._vectors.clear()
                self._owner = embedder
        return CachedEmbedder(embedder, self)

    def _rows(self, embedder: Embedder, texts: list[str]) -> dict[str, npt.NDArray[np.float32]]:
        """Each text's vector (float32, as the model makes it), embedding only the ones not cached."""
        out: dict[str, npt.NDArray[np.float32]] = {}
        with self._lock:
            for text in texts:
                cached = self._vectors.get(text)
                if cached is not None:
                    self._vectors.move_to_end(text)
                    out[text] = cached
        missing = [t for t in dict.fromkeys(texts) if t not in out]
        self.hits += len(out)
        self.misses += len(missing)
        if missing:
            # Embedded longest first, so each of the model's batches pads to similar lengths; kept in order.
            ordered = sorted(missing, key=len, reverse=True)
            for text, vector in zip(ordered, embedder.embed_documents(ordered), strict=True):
                out[text] = np.asarray(vector, dtype=np.float32)
            with self._lock:
                for text in missing:
                    self._vectors[text] = out[text]
                    self._vectors.move_to_end(text)
                while len(self._vectors) > self.maxsize:
                    self._vectors.popitem(last=False)
        return out

    def embed(self, embedder: Embedder, texts: list[str]) -> list[list[float]]:
        rows = self._rows(embedder, texts)
        return [rows[t].tolist() for t in texts]

    def matrix(self, embedder: Embedder, texts: list[str]) -> npt.NDArray[np.float64]:
        """The texts' vectors as one matrix, a row per text, without a detour through Python lists."""
        rows = self._rows(embedder, texts)
        return np.stack([rows[t] for t in texts]).astype(np.float64)


class CachedEmbedder(Embeddings):
    """An embedder whose document vectors come from an `EmbeddingCache` (see `EmbeddingCache.wrap`)."""

    def __init__(self, embedder: Embedder, cache: EmbeddingCache) -> None:
        self.embedder = embedder
        self.cache = cache

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.cache.embed(self.embedder, list(texts))

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def embed_matrix(embedder: Embedder, texts: list[str]) -> npt.NDArray[np.float64]:
    """The texts' vectors as one matrix, a row per text. From an `EmbeddingCache` it is stacked from the cached
    arrays: turning a few hundred vectors into Python floats and back cost about 3 ms a call, five calls a turn."""
    if not texts:
        return np.zeros((0, 0))
    if isinstance(embedder, CachedEmbedder):
        return embedder.cache.matrix(embedder.embedder, texts)
    return np.asarray(embedder.embed_documents(texts), dtype=np.float64)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0 when either is zero)."""
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def cosine_rows(queries: npt.ArrayLike, texts: npt.ArrayLike) -> list[list[float]]:
    """Cosine similarity of each query vector to each text vector (a row per query), in one matrix product."""
    q, t = np.asarray(queries, dtype=np.float64), np.asarray(texts, dtype=np.float64)
    if not q.size or not t.size:
        return [[] for _ in range(len(q))]
    qn, tn = np.linalg.norm(q, axis=1, keepdims=True), np.linalg.norm(t, axis=1, keepdims=True)
    q, t = (
        np.divide(q, qn, out=np.zeros_like(q), where=qn > 0),
        np.divide(t, tn, out=np.zeros_like(t), where=tn > 0),
    )
    rows: list[list[float]] = (q @ t.T).tolist()
    return rows


def similarities(embedder: Embedder, query: str, texts: Sequence[str]) -> list[float]:
    """Cosine similarity of `query` to each text, embedded in one batch."""
    if not texts:
        return []
    vectors = embed_matrix(embedder, [query, *texts])
    return cosine_rows(vectors[:1], vectors[1:])[0]


PREFIX_CHARS = 6
"""A salient word of this length or more is mentioned when a passage word starts with the same letters."""

_NAME_RE = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w-]*)")


def _common_word(word: str) -> bool:
    """A whole word of the bundled tokenizer's WordPiece vocabulary (about 20,000 everyday English words);
    product names, acronyms and jargon split into pieces."""
    tokenizer = get_tokenizer()
    forms = [word] + [
        word[: -len(end)] for end in _INFLECTIONS if word.endswith(end) and len(word) > len(end) + 2
    ]
    return any(len(tokenizer.encode(form, add_special_tokens=False).ids) == 1 for form in forms)


_INFLECTIONS = ("s", "es", "ed", "d", "ing")
"""Endings of an everyday word's inflected forms ("restricts", "configured"), which the vocabulary may lack."""


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
