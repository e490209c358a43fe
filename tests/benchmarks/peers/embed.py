"""The embedder a peer's store index uses (langgraph.json `store.index.embed` = "<this file>:embeddings"): Keel's
offline MiniLM (memory.embeddings.get_embeddings), the int8 graph read from the benchmark's KEEL_MODEL_CACHE, so
a peer embeds what Keel embeds, with the same model, in its own process."""

from __future__ import annotations

import os

from memory.embeddings import get_embeddings

embeddings = get_embeddings(cache_dir=os.environ.get("KEEL_MODEL_CACHE") or None)
