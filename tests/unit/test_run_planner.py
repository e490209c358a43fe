"""Request planning is pure: a run request and this deployment's settings in, a plan or a 422 out, no database.

The executor plans the request stored in the run's kwargs again; the answer must be the one the manager got.
"""

from __future__ import annotations

import pytest
from langgraph.types import Command

from server.auth import User
from server.errors import ApiError
from server.runs.planner import AGENT_GRAPH, GraphInfo, Planner, merge_assistant
from server.schemas import RunCreate
from server.serde import jsonable
from server.service import Assistants, GraphEntry
from server.settings import Settings

GRAPHS = {
    "agent": AGENT_GRAPH,
    "plain": GraphInfo(context_fields=frozenset({"topic", "user_id"})),
    "schemaless": GraphInfo(),
}


@pytest.fixture
def planner() -> Planner:
    assistants = Assistants(None, {g: GraphEntry(g) for g in GRAPHS})
    return Planner(Settings(keel_limit_steps=40, keel_limit_recursion=60), assistants, GRAPHS)


def request(**fields) -> RunCreate:
    return RunCreate.model_validate({"assistant_id": "agent", **fields})


def test_a_plan_needs_only_the_request(planner):
    plan = planner.plan(
        User("alice", ("analyst",), "acme"),
        request(
            input={"messages": []},
            stream_mode=["updates", "messages-tuple"],
            context={"max_steps": 7, "namespace": "docs"},
            interrupt_before=["critique"],
        ),
    )
    assert plan.assistant["graph_id"] == "agent"
    assert plan.modes == ["updates", "messages-tuple"]
    assert plan.graph_input == {"messages": []}
    ctx = plan.context
    assert (ctx.user_id, ctx.roles, ctx.tenant, ctx.max_steps, ctx.namespace) == (
        "alice",
        ["analyst"],
        "acme",
        7,
        "docs",
    )


def test_a_resume_command_becomes_a_command(planner):
    plan = planner.plan(User("alice"), request(command={"resume": "yes"}))
    assert isinstance(plan.graph_input, Command) and plan.graph_input.resume == "yes"


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"stream_mode": ["tools"]}, "Unsupported stream_mode 'tools'"),
        ({"context": {"max_steps": 41}}, "KEEL_LIMIT_STEPS"),
        ({"context": {"model": "x"}}, "context.model cannot be set by a request"),
        ({"context": {"user_id": "mallory"}}, "context.user_id cannot be set by a request"),
        ({"context": {"tenant": "other"}}, "context.tenant cannot be set by a request"),
        ({"context": {"roles": ["admin"]}}, "context.roles cannot be set by a request"),
        ({"config": {"recursion_limit": 61}}, "KEEL_LIMIT_RECURSION"),
        ({"command": {}}, "command must set at least one of resume, update or goto"),
    ],
)
def test_what_the_deployment_cannot_do_is_a_422(planner, fields, detail):
    with pytest.raises(ApiError) as err:
        planner.plan(User("alice"), request(**fields))
    assert err.value.status == 422 and detail in err.value.detail


def test_unknown_context_keys_and_interrupt_nodes_are_accepted_as_langgraph_api_accepts_them(planner):
    """langgraph-api drops context keys outside the graph's context schema and LangGraph never interrupts at a
    node that does not exist; Keel's agent does the same (the identity and ceiling checks above still hold)."""
    plan = planner.plan(
        User("alice"),
        request(context={"not_a_field": 1, "max_steps": 5}, interrupt_before=["nope"], interrupt_after=["x"]),
    )
    assert plan.context.max_steps == 5 and not hasattr(plan.context, "not_a_field")
    assert plan.body.interrupt_before == ["nope"] and plan.body.interrupt_after == ["x"]


def test_another_graph_gets_its_schema_fields_and_the_callers_identity(planner):
    plan = planner.plan(
        User("alice", ("analyst",), "acme"),
        RunCreate.model_validate({"assistant_id": "plain", "context": {"topic": "t", "other": 1}}),
    )
    assert plan.context == {"topic": "t", "user_id": "alice"}
    free = planner.plan(
        User("bob"), RunCreate.model_validate({"assistant_id": "schemaless", "context": {"a": 1}})
    )
    assert free.context == {"a": 1}
    for graph in ("plain", "schemaless"):
        with pytest.raises(ApiError) as err:
            planner.plan(
                User("bob"), RunCreate.model_validate({"assistant_id": graph, "context": {"user_id": "x"}})
            )
        assert err.value.status == 422 and "context.user_id" in err.value.detail


def test_the_assistants_config_and_context_sit_under_the_requests():
    assistant = {
        "assistant_id": "00000000-0000-0000-0000-0000000000aa",
        "graph_id": "agent",
        "config": {"tags": ["a"], "recursion_limit": 30, "configurable": {"k": 1, "j": 1}},
        "context": {"max_steps": 3, "namespace": "kb"},
    }
    body = request(config={"tags": ["r"], "configurable": {"k": 2}}, context={"max_steps": 9})
    merged = merge_assistant(body, assistant)
    assert merged.config == {
        "tags": ["r"],
        "recursion_limit": 30,
        "configurable": {"k": 2, "j": 1, "graph_id": "agent", "assistant_id": assistant["assistant_id"]},
    }
    assert merged.context == {"max_steps": 9, "namespace": "kb"}


def test_an_assistant_cannot_lift_identity_or_ceilings(planner):
    for context in ({"user_id": "mallory"}, {"max_steps": 41}):
        with pytest.raises(ApiError) as err:
            planner.check_assistant(User("alice"), "agent", {}, context)
        assert err.value.status == 422
    with pytest.raises(ApiError):
        planner.check_assistant(User("alice"), "agent", {"recursion_limit": 61}, {})


def test_an_unknown_assistant_is_a_422(planner):
    with pytest.raises(ApiError) as err:
        planner.plan(User("alice"), RunCreate.model_validate({"assistant_id": "other"}))
    assert err.value.status == 422


def test_the_stored_request_plans_to_the_same_run(planner):
    """What the manager stores in kwargs["request"] gives the executor the same context and config back."""
    user = User("alice", ("analyst",), None)
    body = request(
        input={"messages": [{"role": "user", "content": "hi"}]},
        stream_mode="values",
        context={"retrieve_k": 3},
        config={"recursion_limit": 50, "tags": ["t"]},
    )
    first = planner.plan(user, body)
    stored = jsonable(body.model_dump(exclude={"assistant_id"}, exclude_unset=True))
    again = planner.plan(
        user, RunCreate.model_validate({**stored, "assistant_id": first.assistant["assistant_id"]})
    )
    assert (
        again.context == first.context
        and again.modes == first.modes
        and again.graph_input == first.graph_input
    )
    kw = {
        "thread_id": "00000000-0000-0000-0000-000000000001",
        "run_id": "00000000-0000-0000-0000-000000000002",
        "user": user,
        "run_metadata": {},
    }
    assert planner.run_config(again.body, assistant=again.assistant, **kw) == planner.run_config(
        body, assistant=first.assistant, **kw
    )
    assert planner.run_config(body, assistant=first.assistant, **kw)["recursion_limit"] == 50
