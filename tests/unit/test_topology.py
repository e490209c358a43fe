"""The graph's shape is a reviewed artefact: a change to it must update the snapshot on purpose."""

from pathlib import Path

from agent.graph import graph

SNAPSHOT = Path(__file__).parent / "snapshots" / "graph.mmd"


def test_topology_matches_snapshot():
    current = graph.get_graph().draw_mermaid()
    assert SNAPSHOT.exists(), (
        "write the snapshot: python -c 'from agent.graph import graph; print(graph.get_graph().draw_mermaid())'"
    )
    assert current == SNAPSHOT.read_text(), (
        "graph topology changed; review and update tests/unit/snapshots/graph.mmd"
    )


def test_nodes_and_edges():
    g = graph.get_graph()
    assert set(g.nodes) == {"__start__", "retrieve", "summarize", "execute_tools", "critique", "__end__"}
    edges = {(e.source, e.target) for e in g.edges}
    assert ("__start__", "retrieve") in edges
    assert {
        ("summarize", "execute_tools"),
        ("execute_tools", "summarize"),
        ("summarize", "critique"),
        ("critique", "retrieve"),
        ("critique", "__end__"),
    } <= edges
