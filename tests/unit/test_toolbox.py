"""Tools reach the graph through an explicit Toolbox: no process-wide registry or services."""

from langgraph.graph import StateGraph

from agent.graph import build
from agent.toolbox import Toolbox, default_tools
from server.service import load_builder
from tests.support import fault_graph
from tests.support.fault_graph import TOOLS


def test_each_toolbox_has_its_own_registry():
    a, b = Toolbox(), Toolbox()
    assert a.registry is not b.registry
    assert a.registry.names() == default_tools().names()
    assert "researcher" in a.registry.names() and "create_ticket" in a.registry.names()
    assert a.pool is None and a.settings == {}
    a.registry.register(TOOLS[0])
    assert "fx" in a.registry.names()
    assert "fx" not in b.registry.names() and "fx" not in default_tools().names()


def test_keel_graph_function_registers_its_tools_in_the_given_toolbox_only():
    toolbox, other = Toolbox(), Toolbox()
    b = load_builder("tests.support.fault_graph:build", toolbox)
    assert isinstance(b, StateGraph) and set(b.nodes) == {"a", "b", "c", "d"}
    assert {"fx", "fx_noreconcile"} <= set(toolbox.registry.names())
    assert "fx" not in other.registry.names()


def test_keel_graph_builder_is_served_as_it_is():
    toolbox = Toolbox()
    assert load_builder("tests.support.fault_graph:builder", toolbox) is fault_graph.builder
    assert toolbox.registry.names() == default_tools().names()


def test_keel_agent_is_built_on_the_services_toolbox():
    assert (
        set(load_builder(None, Toolbox()).nodes)
        == set(build().nodes)
        == {"retrieve", "summarize", "execute_tools", "critique"}
    )
