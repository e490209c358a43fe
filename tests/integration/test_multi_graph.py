"""Every graph of langgraph.json is served: Keel's agent (rebuilt with the service's Toolbox) next to a small
graph of the project's own, each with its system assistant, runs on both, and the official Python SDK's
assistants client over them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import BadRequestError, ConflictError, NotFoundError

from server.assistants.manager import system_id
from server.settings import Settings
from tests.support.inprocess import running_service

ECHO_PY = Path(__file__).resolve().parents[1] / "support" / "echo_graph.py"
ASK = {"messages": [{"role": "user", "content": "How do workers scale out?"}]}


@pytest.fixture(scope="module")
async def svc(tmp_path_factory, db):
    directory = tmp_path_factory.mktemp("project")
    rel = os.path.relpath(ECHO_PY, directory)
    graphs = {"agent": "agent.graph:graph", "echo": {"path": f"./{rel}:graph", "description": "echo"}}
    (directory / "langgraph.json").write_text(json.dumps({"graphs": graphs}))
    settings = Settings(keel_config=str(directory / "langgraph.json"))
    async with running_service(settings, db) as service:
        yield service


@pytest.fixture
async def sdk(svc):
    from server.app import create_app

    transport = httpx.ASGITransport(app=create_app(svc.settings, svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as http:
        yield LangGraphClient(http)


async def test_both_graphs_are_served_and_the_agent_keeps_the_services_toolbox(svc):
    assert set(svc.graphs) == {"agent", "echo"}
    # The agent named by langgraph.json is Keel's agent rebuilt around the service's Toolbox (its pool).
    from agent import graph as agent_graph

    assert svc.graphs["agent"].builder is not agent_graph.builder  # the module's, with the default toolbox
    assert set(svc.graphs["agent"].nodes) == set(agent_graph.graph.nodes)
    assert svc.graphs["agent"].checkpointer is svc.db.checkpointer
    assert svc.graphs["echo"].checkpointer is svc.db.checkpointer and svc.graphs["echo"].name == "echo"


async def test_runs_on_both_graphs_through_the_sdk(sdk):
    found = await sdk.assistants.search(metadata={"created_by": "system"})
    assert {a["graph_id"]: a["assistant_id"] for a in found} == {
        "agent": system_id("agent"),
        "echo": system_id("echo"),
    }
    agent_thread = await sdk.threads.create()
    out = await sdk.runs.wait(agent_thread["thread_id"], "agent", input=ASK)
    assert out["messages"][-1]["type"] == "ai" and out["messages"][-1]["content"]

    mine = await sdk.assistants.create("echo", context={"topic": "tides"}, name="tidal", metadata={"k": "v"})
    echo_thread = await sdk.threads.create()
    out = await sdk.runs.wait(echo_thread["thread_id"], mine["assistant_id"], input={"question": "why"})
    assert out["answer"] == "plain: why about tides" and out["seen"]["graph_id"] == "echo"

    # The thread remembers which graph ran on it, as langgraph-api records it.
    thread = await sdk.threads.get(echo_thread["thread_id"])
    assert (
        thread["metadata"]["graph_id"] == "echo"
        and thread["metadata"]["assistant_id"] == mine["assistant_id"]
    )

    # The rest of the SDK's assistants client.
    assert (await sdk.assistants.get(mine["assistant_id"]))["name"] == "tidal"
    same = await sdk.assistants.create("echo", assistant_id=mine["assistant_id"], if_exists="do_nothing")
    assert same["assistant_id"] == mine["assistant_id"] and same["name"] == "tidal"
    with pytest.raises(ConflictError):
        await sdk.assistants.create("echo", assistant_id=mine["assistant_id"])
    patched = await sdk.assistants.update(mine["assistant_id"], context={"topic": "waves"})
    assert patched["version"] == 2
    assert [v["version"] for v in await sdk.assistants.get_versions(mine["assistant_id"])] == [2, 1]
    out = await sdk.runs.wait(None, mine["assistant_id"], input={"question": "why"})
    assert out["answer"] == "plain: why about waves"
    back = await sdk.assistants.set_latest(mine["assistant_id"], 1)
    assert back["version"] == 1 and back["context"] == {"topic": "tides"}
    assert await sdk.assistants.count(graph_id="echo", metadata={"k": "v"}) == 1
    assert [a["name"] for a in await sdk.assistants.search(graph_id="echo", metadata={"k": "v"})] == ["tidal"]
    graph = await sdk.assistants.get_graph(mine["assistant_id"])
    assert [n["id"] for n in graph["nodes"]] == ["__start__", "echo", "__end__"]
    schemas = await sdk.assistants.get_schemas(system_id("agent"))
    assert schemas["graph_id"] == "agent" and "max_steps" in schemas["context_schema"]["properties"]
    assert await sdk.assistants.get_subgraphs(mine["assistant_id"]) == {}
    await sdk.assistants.delete(mine["assistant_id"])
    with pytest.raises(NotFoundError):
        await sdk.assistants.get(mine["assistant_id"])


async def test_state_and_history_of_a_thread_use_the_graph_that_ran_on_it(sdk):
    """State, history and state updates of an echo-graph thread go through the echo graph (its channels and
    nodes), not through the default agent graph."""
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    out = await sdk.runs.wait(tid, "echo", input={"question": "tides"})
    assert out["answer"] == "plain: tides about none"

    state = await sdk.threads.get_state(tid)
    assert state["values"]["answer"] == "plain: tides about none" and state["values"]["question"] == "tides"
    assert "messages" not in state["values"] and state["next"] == []
    at = await sdk.threads.get_state(tid, checkpoint_id=state["checkpoint"]["checkpoint_id"])
    assert at["values"]["question"] == "tides"

    history = await sdk.threads.get_history(tid, limit=10)
    assert history[0]["values"]["answer"] == "plain: tides about none"
    assert any(step["next"] == ["echo"] for step in history)  # the echo graph's node, not the agent's

    # `summarize` is the agent's node, not the echo graph's.
    with pytest.raises(BadRequestError, match="Node summarize does not exist"):
        await sdk.threads.update_state(tid, {"answer": "x"}, as_node="summarize")
    updated = await sdk.threads.update_state(tid, {"answer": "edited"}, as_node="echo")
    assert updated["checkpoint"]["checkpoint_id"] != state["checkpoint"]["checkpoint_id"]
    after = await sdk.threads.get_state(tid)
    assert after["values"] == {**state["values"], "answer": "edited"}
    assert (await sdk.threads.get(tid))["values"]["answer"] == "edited"
