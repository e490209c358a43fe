"""Routing reads state only; budgets end turns with a named status."""

from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage

from agent.budgets import finish, next_step
from agent.context import Context
from agent.routing import (
    route_after_critique,
    route_after_execute_tools,
    route_after_retrieve,
    route_after_summarize,
)


def test_route_after_summarize():
    tool = AIMessage(content="", tool_calls=[{"name": "calculator", "args": {}, "id": "1"}])
    assert route_after_summarize({"messages": [tool], "status": "running"}) == "execute_tools"
    assert (
        route_after_summarize({"messages": [AIMessage(content="draft")], "status": "running"}) == "critique"
    )
    assert route_after_summarize({"messages": [tool], "status": "budget_exhausted:max_steps"}) == "__end__"


def test_route_after_critique_and_others():
    assert route_after_critique({"phase": "revise", "status": "running"}) == "retrieve"
    assert route_after_critique({"phase": "done", "status": "done"}) == "__end__"
    assert route_after_critique({"phase": "revise", "status": "budget_exhausted:max_steps"}) == "__end__"
    assert route_after_retrieve({"status": "running"}) == "summarize"
    assert route_after_retrieve({"status": "budget_exhausted:max_steps"}) == "__end__"
    assert route_after_execute_tools({"status": "running"}) == "summarize"
    assert route_after_execute_tools({"status": "budget_exhausted:max_tool_calls"}) == "__end__"


def test_next_step_counts_and_resets():
    ctx = Context(max_steps=3)
    assert next_step({"steps": 2}, ctx) == (3, False)
    assert next_step({"steps": 3}, ctx) == (4, True)
    assert next_step({"steps": 3}, ctx, new_turn=True) == (1, False)


def test_finish_prefers_best_answer_and_removes_current_draft():
    state = {
        "messages": [HumanMessage(content="q")],
        "best_answer": "best",
        "draft": "latest",
        "draft_id": "d1",
    }
    out = finish(state, "max_revisions", step=7)
    assert out["status"] == "budget_exhausted:max_revisions" and out["steps"] == 7
    assert isinstance(out["messages"][0], RemoveMessage) and out["messages"][0].id == "d1"
    assert out["messages"][1].content.startswith("best") and "max_revisions" in out["messages"][1].content


def test_finish_without_any_answer_says_so():
    out = finish({"messages": []}, "max_tool_calls", step=1)
    assert len(out["messages"]) == 1
    assert "could not produce an answer" in out["answer"]
