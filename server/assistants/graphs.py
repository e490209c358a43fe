"""The graphs this deployment serves: those langgraph.json lists (or Keel's agent alone), compiled with Postgres.

A graph entry is `"id": "./file.py:attr"` (relative to the json), `"id": "package.module:attr"`, or an object
with `path` and `description`, as langgraph-api reads them. The object named may be:
- a `StateGraph` builder (compiled here),
- a compiled graph (its builder is compiled again, with Keel's checkpointer and store, keeping the graph's
  name and its compile-time interrupts),
- a factory, called once at start-up: with the service's `Toolbox` when its one parameter is named
  `toolbox` or annotated `Toolbox`, with nothing when it takes no parameter, otherwise with an empty
  RunnableConfig (langgraph-api calls factories per run; Keel builds each graph once).
Keel's agent (the compiled `agent.graph.graph`, which langgraph.json names so `langgraph dev` serves it too)
is rebuilt with `agent.graph.build(toolbox)`, so its tools use the service's pool and settings.

`KEEL_GRAPH=module:attr` is a shorthand kept from before langgraph.json was read: the object it names (a
builder, or a function of the Toolbox) is served as the `agent` graph, whatever langgraph.json says of it.
A graph that fails to load stops start-up with a `GraphLoadError` naming it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

from agent import graph as agent_graph
from agent.context import Context
from agent.toolbox import Toolbox

AGENT = "agent"
"""The graph id of Keel's agent (and of what KEEL_GRAPH names)."""

AnyBuilder = StateGraph[Any, Any, Any, Any]


class GraphLoadError(ValueError):
    """A graph named by langgraph.json or KEEL_GRAPH cannot be loaded; the message names it."""


@dataclass(frozen=True)
class GraphSpec:
    """One entry of langgraph.json's `graphs`."""

    graph_id: str
    source: str
    description: str | None = None
    base_dir: Path = field(default_factory=Path.cwd)


@dataclass
class LoadedGraph:
    """A graph ready to compile: its builder, the name its system assistant gets, and its options."""

    graph_id: str
    builder: AnyBuilder
    name: str
    description: str | None = None
    interrupt_before: list[str] = field(default_factory=list)
    interrupt_after: list[str] = field(default_factory=list)
    keel_context: bool = False
    """Runs get Keel's agent `Context` (identity, model, budgets from settings) rather than a request's dict."""


def read_config(path: Path) -> list[GraphSpec]:
    """The graphs a langgraph.json lists, in order."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GraphLoadError(f"cannot read {path}: {exc}") from None
    graphs = data.get("graphs") if isinstance(data, dict) else None
    if not isinstance(graphs, dict) or not graphs:
        raise GraphLoadError(f"{path}: 'graphs' must be an object naming at least one graph")
    specs = []
    for gid, value in graphs.items():
        if isinstance(value, str):
            source, description = value, None
        elif isinstance(value, dict) and isinstance(value.get("path"), str):
            source, description = value["path"], value.get("description")
        else:
            raise GraphLoadError(
                f"{path}: graph {gid!r} must be a 'file.py:attr' string or an object with 'path'"
            )
        specs.append(GraphSpec(gid, source, description, path.resolve().parent))
    return specs


def config_path(setting: str | None) -> Path | None:
    """The langgraph.json to read: KEEL_CONFIG, else ./langgraph.json when present; None for the agent alone."""
    if setting is None:
        default = Path("langgraph.json")
        return default if default.is_file() else None
    if not setting.strip():
        return None
    path = Path(setting)
    if not path.is_file():
        raise GraphLoadError(f"KEEL_CONFIG={setting!r}: no such file")
    return path


def _import_object(spec: GraphSpec) -> Any:
    target, sep, attr = spec.source.rpartition(":")
    if not sep or not target or not attr:
        raise GraphLoadError(
            f"graph {spec.graph_id!r}: {spec.source!r} is not 'path/to/file.py:attr' or 'package.module:attr'"
        )
    if "/" in target or target.endswith(".py"):
        module = _import_file((spec.base_dir / target).resolve(), spec.graph_id)
    else:
        module = importlib.import_module(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise GraphLoadError(f"graph {spec.graph_id!r}: {target} has no attribute {attr!r}") from None


def _import_file(path: Path, graph_id: str) -> Any:
    """A module by file path: by its dotted name when it lies in a package on sys.path (so `./agent/graph.py` is
    the `agent.graph` Keel already imported), else as a standalone module."""
    if not path.is_file():
        raise GraphLoadError(f"graph {graph_id!r}: no such file {path}")
    for entry in sys.path:
        try:
            root = Path(entry or ".").resolve()
            rel = path.relative_to(root)
        except (ValueError, OSError):
            continue
        parts = [*rel.parent.parts, path.stem]
        if all(p.isidentifier() for p in parts) and all(
            (root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))
        ):
            try:
                module = importlib.import_module(".".join(parts))
            except ImportError:
                continue
            if Path(getattr(module, "__file__", "") or "").resolve() == path:
                return module
    name = f"keel_graph_{graph_id}".replace("-", "_")
    mspec = importlib.util.spec_from_file_location(name, path)
    if mspec is None or mspec.loader is None:
        raise GraphLoadError(f"graph {graph_id!r}: cannot import {path}")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[name] = module
    mspec.loader.exec_module(module)
    return module


def _takes_toolbox(fn: Any) -> bool | None:
    """True: call it with the Toolbox; False: with nothing; None: with a RunnableConfig."""
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return True
    if not params:
        return False
    first = params[0]
    if first.name == "toolbox" or first.annotation in (Toolbox, "Toolbox", "Toolbox | None"):
        return True
    return None


def to_builder(graph_id: str, found: Any, toolbox: Toolbox, *, toolbox_call: bool = False) -> LoadedGraph:
    """What a graph entry names, as an uncompiled builder (see the module docstring for what is accepted)."""
    if isinstance(found, Pregel) and getattr(found, "builder", None) is agent_graph.builder:
        return LoadedGraph(graph_id, build_agent(toolbox), found.name, keel_context=True)
    if isinstance(found, StateGraph):
        return LoadedGraph(graph_id, found, graph_id, keel_context=found.context_schema is Context)
    if isinstance(found, Pregel):
        builder = getattr(found, "builder", None)
        if not isinstance(builder, StateGraph):
            raise GraphLoadError(f"graph {graph_id!r}: a compiled graph without its StateGraph builder")
        before, after = found.interrupt_before_nodes, found.interrupt_after_nodes
        return LoadedGraph(
            graph_id,
            builder,
            found.name if found.name and found.name != "LangGraph" else graph_id,
            interrupt_before=list(before) if isinstance(before, list) else [],
            interrupt_after=list(after) if isinstance(after, list) else [],
            keel_context=builder.context_schema is Context,
        )
    if callable(found):
        how = True if toolbox_call else _takes_toolbox(found)
        made = found(toolbox) if how else found() if how is False else found({"configurable": {}})
        if inspect.isawaitable(made) or not isinstance(made, (StateGraph, Pregel)):
            raise GraphLoadError(
                f"graph {graph_id!r}: its factory returned {type(made).__name__}, not a StateGraph or compiled "
                "graph (async factories and context managers are not supported)"
            )
        return to_builder(graph_id, made, toolbox)
    raise GraphLoadError(f"graph {graph_id!r}: {type(found).__name__} is not a graph, builder or factory")


def build_agent(toolbox: Toolbox) -> AnyBuilder:
    """Keel's agent, its tools wired to the service's Toolbox."""
    return cast(AnyBuilder, agent_graph.build(toolbox))


def load_keel_graph(spec: str, toolbox: Toolbox) -> AnyBuilder:
    """KEEL_GRAPH's builder: `module:attr` naming an uncompiled StateGraph, or a function of the Toolbox."""
    module, _, attr = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr or "builder")
    except (ImportError, AttributeError) as exc:
        raise GraphLoadError(f"KEEL_GRAPH={spec!r}: cannot load the graph builder ({exc})") from exc
    built = found if isinstance(found, StateGraph) or not callable(found) else found(toolbox)
    return cast(AnyBuilder, built)  # user code named by KEEL_GRAPH, imported by name


def load_graphs(config: Path | None, keel_graph: str | None, toolbox: Toolbox) -> dict[str, LoadedGraph]:
    """Every graph to serve, by graph id: langgraph.json's (or the agent alone), `agent` replaced by KEEL_GRAPH."""
    specs = read_config(config) if config is not None else [GraphSpec(AGENT, "agent.graph:graph")]
    loaded: dict[str, LoadedGraph] = {}
    for spec in specs:
        if spec.graph_id == AGENT and keel_graph:
            continue  # replaced below
        try:
            loaded[spec.graph_id] = to_builder(spec.graph_id, _import_object(spec), toolbox)
        except GraphLoadError:
            raise
        except Exception as exc:  # user code: whatever it raises, name the graph that failed
            raise GraphLoadError(f"graph {spec.graph_id!r} ({spec.source}) failed to load: {exc!r}") from exc
        loaded[spec.graph_id].description = spec.description
    if keel_graph:
        description = next((s.description for s in specs if s.graph_id == AGENT), None)
        loaded[AGENT] = LoadedGraph(
            AGENT, load_keel_graph(keel_graph, toolbox), AGENT, description=description, keel_context=True
        )
    if not loaded:
        raise GraphLoadError("no graph to serve")
    return loaded
