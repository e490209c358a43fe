"""The offline engine's sentence vectors are embedded once: the answer and the critic share them through the
graph's `EmbeddingCache`, and later turns on the same passages embed nothing new (issue 12, turn latency)."""

from __future__ import annotations

from langchain_core.embeddings import Embeddings

from agent.offline.critic import critique
from agent.offline.extract import extractive_answer
from agent.offline.messages import Document
from agent.offline.semantic import EmbeddingCache
from memory.embeddings import get_embeddings

PASSAGES = [
    Document(
        "1",
        "docs/operations.md",
        "Running Keel > Scaling out",
        "To scale Keel out, run more `keel worker` processes against the same Postgres. Each worker claims "
        "runs with a lease. A dead worker is detected when its lease expires.",
    ),
    Document(
        "2",
        "docs/operations.md",
        "Running Keel > Durability",
        "KEEL_DURABILITY sets when Keel writes checkpoints: sync, async or exit. The default is sync.",
    ),
]


class Counting(Embeddings):
    """The bundled model, counting the texts it is asked to embed."""

    def __init__(self) -> None:
        self.inner = get_embeddings()
        self.texts: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts += texts
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def test_the_critic_embeds_nothing_the_answer_already_embedded() -> None:
    counting, cache = Counting(), EmbeddingCache()
    question = "How do I scale Keel out?"
    answer = extractive_answer(question, PASSAGES, 3, cache.wrap(counting))
    assert "keel worker" in answer
    answered = len(counting.texts)
    assert answered == len(set(counting.texts))  # nothing embedded twice within the answer either
    verdict = critique(question, answer, PASSAGES, cache.wrap(counting))
    assert verdict["answers_question"] and verdict["grounded"]
    assert counting.texts[answered:] == []  # quoted sentences and the question: all cached

    # A second turn on the same passages embeds only its new question.
    extractive_answer("How is a dead worker detected?", PASSAGES, 3, cache.wrap(counting))
    assert counting.texts[answered:] == ["How is a dead worker detected?"]


def test_vectors_come_back_unchanged_and_the_cache_is_bounded() -> None:
    counting, cache = Counting(), EmbeddingCache(maxsize=3)
    embedder = cache.wrap(counting)
    texts = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    first = embedder.embed_documents(texts)
    direct = counting.inner.embed_documents(texts)
    assert all(
        abs(a - b) < 1e-6 for u, v in zip(first, direct, strict=True) for a, b in zip(u, v, strict=True)
    )
    assert len(cache) == 3  # the oldest one went
    counting.texts.clear()
    embedder.embed_documents(["eta theta", "alpha beta"])
    assert counting.texts == ["alpha beta"]


def test_another_embedder_never_gets_the_first_ones_vectors() -> None:
    cache = EmbeddingCache()
    one, other = Counting(), Counting()
    cache.wrap(one).embed_documents(["scale out"])
    cache.wrap(other).embed_documents(["scale out"])
    assert other.texts == ["scale out"]


def test_a_matrix_from_the_cache_is_the_model_s_vectors_without_embedding_again() -> None:
    import numpy as np

    from agent.offline.semantic import cosine_rows, embed_matrix

    counting, cache = Counting(), EmbeddingCache()
    cached = cache.wrap(counting)
    texts = ["To scale Keel out, run more workers.", "The default is sync.", "A dead worker is detected."]
    listed = cached.embed_documents(texts)
    embedded = len(counting.texts)
    matrix = embed_matrix(cached, [texts[2], texts[0]])
    assert len(counting.texts) == embedded  # both were cached
    assert matrix.shape == (2, 384)
    assert np.array_equal(matrix, np.asarray([listed[2], listed[0]], dtype=np.float64))  # the same floats
    plain = embed_matrix(counting, texts)  # an embedder without a cache: its own vectors
    assert np.allclose(plain, np.asarray(listed), atol=1e-6)
    assert cosine_rows(matrix[:1], matrix) == cosine_rows([listed[2]], [listed[2], listed[0]])
    assert embed_matrix(cached, []).size == 0 and cosine_rows([], []) == []
