"""The scripted test model replays its script in order, records what it saw and fails loudly."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from tests.support.scripted import ScriptedChatModel


class Critique(BaseModel):
    """Grade a draft answer."""

    score: float = Field(ge=0, le=1)
    reasons: list[str]
    revised_query: str


@tool
def calculator(expression: str) -> str:
    """Evaluate arithmetic."""
    return "unused"


def test_replays_the_script_in_order_and_records_calls():
    reply = AIMessage("", tool_calls=[{"name": "calculator", "args": {"expression": "1+1"}, "id": "c1"}])
    model = ScriptedChatModel(["first", reply, lambda messages: f"you said {messages[-1].content}"])

    assert model.invoke([HumanMessage("a")]).content == "first"
    second = model.invoke([SystemMessage("s"), HumanMessage("b")])
    assert second.tool_calls == [
        {"name": "calculator", "args": {"expression": "1+1"}, "id": "c1", "type": "tool_call"}
    ]
    assert model.invoke("c").content == "you said c"

    assert [[m.content for m in call] for call in model.calls] == [["a"], ["s", "b"], ["c"]]
    assert model.remaining == 0
    model.assert_exhausted()
    assert reply.id is None  # the scripted message itself is not mutated by the run


def test_exhausted_script_raises_assertion_error_with_context():
    model = ScriptedChatModel(["only"])
    model.invoke("first question")

    with pytest.raises(
        AssertionError, match=r"script exhausted after 1 calls; last messages: .*second question"
    ):
        model.invoke("second question")
    assert len(model.calls) == 2


def test_empty_script_fails_on_first_call():
    with pytest.raises(AssertionError, match="exhausted after 0 calls"):
        ScriptedChatModel([]).invoke("hi")


def test_assert_exhausted_reports_unused_responses():
    model = ScriptedChatModel(["a", "b"])
    model.invoke("x")
    with pytest.raises(AssertionError, match="1 unused"):
        model.assert_exhausted()


def test_scripted_exceptions_are_raised_then_the_script_continues():
    model = ScriptedChatModel([TimeoutError("provider timed out"), ConnectionError, "recovered"])

    with pytest.raises(TimeoutError, match="provider timed out"):
        model.invoke("q")
    with pytest.raises(ConnectionError, match="scripted failure at call 2"):
        model.invoke("q")
    assert model.invoke("q").content == "recovered"
    assert len(model.calls) == 3


def test_structured_output_from_a_model_instance_or_dict():
    model = ScriptedChatModel(
        [
            Critique(score=0.9, reasons=["supported"], revised_query=""),
            {"score": 0.2, "reasons": ["missing terms"], "revised_query": "pgvector hnsw"},
        ]
    )
    critic = model.with_structured_output(Critique)

    first = critic.invoke("grade this")
    second = critic.invoke("grade that")
    assert first == Critique(score=0.9, reasons=["supported"], revised_query="")
    assert second.revised_query == "pgvector hnsw"
    assert model.call_options[0] == {"tools": ["Critique"], "tool_choice": "any"}
    assert "Critique" in model.bound_tools


def test_structured_output_item_without_forced_tool_fails_loudly():
    model = ScriptedChatModel([{"score": 1.0}])
    with pytest.raises(AssertionError, match="forced no tool"):
        model.invoke("not structured")


def test_bind_tools_records_names_and_shares_the_script():
    model = ScriptedChatModel(["from the bound model", "from the plain model"])
    bound = model.bind_tools([calculator])

    assert bound.invoke("x").content == "from the bound model"
    assert model.invoke("y").content == "from the plain model"
    assert model.bound_tools == ["calculator"]
    assert model.call_options == [
        {"tools": ["calculator"], "tool_choice": None},
        {"tools": [], "tool_choice": None},
    ]


async def test_async_invoke_and_astream_consume_the_same_script():
    model = ScriptedChatModel(["one", "two words", AIMessage("three")])

    assert (await model.ainvoke("a")).content == "one"
    chunks = [c async for c in model.astream("b")]
    assert "".join(c.content for c in chunks) == "two words"
    assert [c.content for c in model.stream("c")] == ["three"]
    assert len(model.calls) == 3


async def test_one_script_is_consumed_in_order_across_graph_nodes():
    class S(TypedDict, total=False):
        question: str
        draft: str
        score: float

    model = ScriptedChatModel(["draft answer", Critique(score=0.8, reasons=["ok"], revised_query="")])
    critic = model.with_structured_output(Critique)

    async def summarize(state: S) -> dict:
        return {"draft": (await model.ainvoke([HumanMessage(state["question"])])).content}

    async def critique(state: S) -> dict:
        result = await critic.ainvoke([HumanMessage(f"<draft>{state['draft']}</draft>")])
        return {"score": result.score}

    builder = StateGraph(S)
    builder.add_node("summarize", summarize)
    builder.add_node("critique", critique)
    builder.add_edge(START, "summarize")
    builder.add_edge("summarize", "critique")
    builder.add_edge("critique", END)
    graph = builder.compile()

    parts = [part async for part in graph.astream({"question": "why?"}, stream_mode="updates")]
    assert parts == [{"summarize": {"draft": "draft answer"}}, {"critique": {"score": 0.8}}]
    assert model.calls[1][0].content == "<draft>draft answer</draft>"
    model.assert_exhausted()


async def test_concurrent_calls_each_take_one_item():
    model = ScriptedChatModel([str(i) for i in range(20)])
    replies = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(20)))

    assert sorted(int(r.content) for r in replies) == list(range(20))
    assert len(model.calls) == 20
