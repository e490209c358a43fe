"""The tools a graph offers and the services they need, handed to the graph when it is built.

No module state: whoever builds the graph (the server, a test, `langgraph dev` through agent/graph.py)
creates a `Toolbox` and passes it to `agent.graph.build`; the nodes that call tools close over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.offline.semantic import EmbeddingCache
from agent.specialists.researcher import RESEARCHER
from tools.builtin import default_registry
from tools.registry import ToolRegistry


def default_tools() -> ToolRegistry:
    """A new registry of Keel's tools: the built-in ones plus the researcher specialist."""
    reg = default_registry()
    reg.register(RESEARCHER)
    return reg


@dataclass
class Toolbox:
    """A graph's tools and their services: the server passes its pool and tool settings; without them (under
    `langgraph dev`, with no Keel database) tools that need the database refuse cleanly."""

    registry: ToolRegistry = field(default_factory=default_tools)
    """The tools the model may call (the server adds tools imported from MCP servers at start-up)."""
    pool: Any = None
    """The database pool for the side-effect ledger, audit and tools that write (None: none)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Tool settings, such as `webhook_url`."""
    embedding_cache: EmbeddingCache = field(default_factory=EmbeddingCache)
    """Sentence vectors the offline engine's answer and critic share across nodes and turns."""
