"""The one seam through which the graph gets its chat models.

`KEEL_MODEL=provider:model` (resolved by the server into `Context.model`) goes through LangChain's
`init_chat_model`; no model means the offline engine. Tests register scripted models under a name and
select them through the same `Context.model` field, so no call site is ever patched.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel

from agent.context import Context
from agent.offline import OfflineChatModel
from agent.offline.semantic import EmbeddingCache

OFFLINE = "keel:offline"

_registry: dict[str, BaseChatModel] = {}
_cache: dict[str, BaseChatModel] = {}
_lock = threading.Lock()


def register_model(name: str, model: BaseChatModel) -> None:
    """Make `model` available as `Context.model = name` (tests, embedding applications)."""
    with _lock:
        _registry[name] = model


def unregister_model(name: str) -> None:
    """Forget a registered model."""
    with _lock:
        _registry.pop(name, None)


def resolve_model(name: str | None) -> BaseChatModel:
    """A chat model for `name`: registered, offline, or `init_chat_model("provider:model")`."""
    if not name or name == OFFLINE:
        return OfflineChatModel()
    with _lock:
        if name in _registry:
            return _registry[name]
        if name in _cache:
            return _cache[name]
    from langchain.chat_models import init_chat_model

    try:
        model = init_chat_model(name)
    except Exception as exc:  # re-raised with the model name users configured
        raise ValueError(f"cannot initialise chat model {name!r}: {exc}") from exc
    with _lock:
        _cache[name] = model
    return model


def store_embeddings(store: Any, cache: EmbeddingCache | None = None) -> Embeddings | None:
    """The embedder of a store's index (the one retrieval embeds queries with), None if it has none; with
    `cache`, its vectors are kept there (the graph's nodes pass their toolbox's, shared by every turn)."""
    embeddings = getattr(store, "embeddings", None)
    if not isinstance(embeddings, Embeddings):
        return None
    return cache.wrap(embeddings) if cache is not None else embeddings


def get_chat_model(
    role: Literal["answer", "critic"], ctx: Context, *, embeddings: Embeddings | None = None
) -> BaseChatModel:
    """The model for a role in this run; the offline engine ranks and grades by meaning with `embeddings`."""
    model = resolve_model(ctx.critic_model or ctx.model) if role == "critic" else resolve_model(ctx.model)
    if embeddings is not None and isinstance(model, OfflineChatModel):
        return model.model_copy(update={"embeddings": embeddings})
    return model
