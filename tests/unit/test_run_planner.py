"""Request planning is pure: a run request and this deployment's settings in, a plan or a 422 out, no database.

The executor plans the request stored in the run's kwargs again; the answer must be the one the manager got.
"""

from __future__ import annotations

import pytest
from langgraph.types import Command

from server.auth import User
from server.errors import ApiError
from server.runs.planner import Planner
from server.schemas import RunCreate
from server.serde import jsonable
from server.service import Assistants
from server.settings import Settings

NODES = {"retrieve", "summarize", "critique", "execute_tools"}


@pytest.fixture
def planner() -> Planner:
    return Planner(Settings(keel_limit_steps=40, keel_limit_recursion=60), Assistants(["agent"]), NODES)


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
        ({"stream_mode": ["events"]}, "Unsupported stream_mode 'events'"),
        ({"context": {"max_steps": 41}}, "KEEL_LIMIT_STEPS"),
        ({"context": {"model": "x"}}, "context.model cannot be set by a request"),
        ({"config": {"recursion_limit": 61}}, "KEEL_LIMIT_RECURSION"),
        ({"interrupt_after": ["nowhere"]}, "interrupt_after: unknown node 'nowhere'"),
        ({"command": {}}, "command must set at least one of resume, update or goto"),
    ],
)
def test_what_the_deployment_cannot_do_is_a_422(planner, fields, detail):
    with pytest.raises(ApiError) as err:
        planner.plan(User("alice"), request(**fields))
    assert err.value.status == 422 and detail in err.value.detail


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
