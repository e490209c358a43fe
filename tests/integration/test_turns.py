"""Turns on the real Postgres saver and store: stopped turns leave nothing behind for the next one.

The HTTP-level matrix (every node boundary, cancel, multitask, SIGKILL) is tests/e2e/test_turns.py; here
are the graph-level cases: old checkpoints, the tool calls a stopped turn leaves unanswered, and the
researcher subgraph's own state.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.graph import START, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from agent.context import Context
from agent.graph import builder, recursion_limit
from agent.render import NOT_EXECUTED
from agent.specialists.researcher import RESEARCHER, ResearchInput
from tests.support.scripted import scripted_models

NS = "turns"
DOCS = {
    "scale.md#0": (
        "scale.md",
        "Scaling out",
        "To scale out, start more keel worker processes against the same "
        "Postgres database; workers claim runs with a lease.",
    ),
    "trace.md#0": (
        "trace.md",
        "Tracing",
        "Set LANGSMITH_TRACING=true to send traces of every run to LangSmith.",
    ),
}
SCALE = "How do I scale out workers?"
TRACE = "How do I send traces to LangSmith?"


@pytest.fixture(scope="module")
async def corpus(db):
    for key, (source, heading, text) in DOCS.items():
        await db.store.aput(
            ("docs", NS), key, {"text": text, "source": source, "heading": heading, "title": source}
        )
    return db


@pytest.fixture
def models():
    with scripted_models() as make:
        yield make


def cfg(ctx: Context) -> dict[str, Any]:
    return {
        "configurable": {"thread_id": str(uuid.uuid4())},
        "recursion_limit": recursion_limit(ctx.max_steps),
    }


def ask(text: str) -> dict[str, Any]:
    return {"messages": [HumanMessage(content=text)]}


def verdict(score: float, revised: str = "") -> dict[str, Any]:
    return {"score": score, "reasons": [f"score {score}"], "revised_query": revised}


async def test_a_new_message_after_a_stop_before_execute_tools_answers_the_old_calls_in_the_prompt(
    corpus, models
):
    """The stopped turn's tool call stays in the thread without a result; the next turn's prompt gives it one
    (providers reject a tool call without a result), and the new turn answers the new question."""
    call = {"name": "calculator", "args": {"expression": "6*7"}, "id": "call-1"}
    ctx, answer, critic = models(
        [AIMessage(content="", tool_calls=[call]), "Set LANGSMITH_TRACING=true [1]."],
        [verdict(0.9)],
        namespace=NS,
        retrieve_k=1,
    )
    graph = builder.compile(checkpointer=corpus.checkpointer, store=corpus.store, name="agent")
    config = cfg(ctx)
    await graph.ainvoke(ask("What is 6*7?"), config, context=ctx, interrupt_before=["execute_tools"])
    assert (await graph.aget_state(config)).next == ("execute_tools",)
    await graph.ainvoke(ask(TRACE), config, context=ctx)
    answer.assert_exhausted()
    critic.assert_exhausted()
    prompt = answer.calls[1]
    i = next(i for i, m in enumerate(prompt) if isinstance(m, AIMessage) and m.tool_calls)
    result = prompt[i + 1]
    assert (
        isinstance(result, ToolMessage) and result.tool_call_id == "call-1" and result.content == NOT_EXECUTED
    )
    assert isinstance(prompt[-1], HumanMessage) and prompt[-1].content == TRACE
    values = (await graph.aget_state(config)).values
    assert values["question"] == TRACE and values["steps"] == 3 and values["status"] == "done"
    assert [s["source"] for s in values["sources"]] == ["trace.md"]
    # The thread itself keeps what happened: the call was never executed, so it has no tool message.
    assert not [m for m in values["messages"] if isinstance(m, ToolMessage)]


async def _old_revise_checkpoint(graph, ctx: Context) -> dict[str, Any]:
    """A thread stopped between critique and retrieve by a Keel from before `turn_of` existed."""
    config = cfg(ctx)
    await graph.aupdate_state(
        config,
        {
            "messages": [HumanMessage(content=SCALE)],
            "question": SCALE,
            "query": "keel worker processes lease",
            "revisions": 1,
            "steps": 3,
            "tool_calls": 0,
            "best_answer": "",
            "best_score": 0.2,
            "draft": "",
            "draft_id": "",
            "critique": verdict(0.2),
            "answer": "",
            "status": "running",
            "phase": "revise",
        },
        as_node="critique",
    )
    snapshot = await graph.aget_state(config)
    assert snapshot.next == ("retrieve",) and "turn_of" not in snapshot.values
    return config


async def test_old_checkpoint_without_turn_of_resumes_the_same_turn(corpus, models):
    ctx, answer, critic = models(
        ["Start more keel worker processes [1]."], [verdict(0.9)], namespace=NS, retrieve_k=1
    )
    graph = builder.compile(checkpointer=corpus.checkpointer, store=corpus.store, name="agent")
    config = await _old_revise_checkpoint(graph, ctx)
    await graph.ainvoke(None, config, context=ctx)
    values = (await graph.aget_state(config)).values
    assert values["question"] == SCALE and values["query"] == "keel worker processes lease"
    assert values["steps"] == 6 and values["revisions"] == 1 and values["status"] == "done"
    # A revision casts a wider net (hybrid, twice k): the revised query's best passage first.
    assert [s["source"] for s in values["sources"]] == ["scale.md", "trace.md"]


async def test_old_checkpoint_without_turn_of_takes_a_new_message_as_a_new_turn(corpus, models):
    ctx, answer, critic = models(
        ["Set LANGSMITH_TRACING=true [1]."], [verdict(0.9)], namespace=NS, retrieve_k=1, max_steps=3
    )
    graph = builder.compile(checkpointer=corpus.checkpointer, store=corpus.store, name="agent")
    config = await _old_revise_checkpoint(graph, ctx)
    await graph.ainvoke(ask(TRACE), config, context=ctx)
    values = (await graph.aget_state(config)).values
    assert values["question"] == values["query"] == TRACE
    assert values["steps"] == 3 and values["revisions"] == 0 and values["status"] == "done"
    assert values["turn_of"] == values["messages"][1].id
    assert [s["source"] for s in values["sources"]] == ["trace.md"]


class Asks(TypedDict, total=False):
    found: dict[str, list[str]]


async def test_researcher_calls_answer_their_own_questions_when_a_resume_reorders_them(corpus):
    """A resumed parent hands each subgraph call the checkpoint of the call made in the same position before
    the interruption. When the calls come in another order, a call must not report another question's
    findings as its own."""
    executions: list[list[str]] = []

    async def research_both(state: Asks) -> dict[str, Any]:
        order = [SCALE, TRACE] if not executions else [TRACE, SCALE]
        executions.append(order)
        found = {}
        for question in order:
            out = await RESEARCHER.func(ResearchInput(question=question), None)
            found[question] = [Path(s["source"]).name for s in out.sources]
        interrupt("checked?")
        return {"found": found}

    parent = StateGraph(Asks)
    parent.add_node("research_both", research_both)
    parent.add_edge(START, "research_both")
    graph = parent.compile(checkpointer=corpus.checkpointer, store=corpus.store)
    ctx = Context(namespace=NS, retrieve_k=1)
    config = cfg(ctx)
    await graph.ainvoke({"found": {}}, config, context=ctx)
    async with corpus.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT DISTINCT checkpoint_ns FROM checkpoints WHERE thread_id = %s AND checkpoint_ns <> ''",
                (config["configurable"]["thread_id"],),
            )
        ).fetchall()
    assert len(rows) == 2, rows  # one namespace per call, to be resumed by position
    out = await graph.ainvoke(Command(resume="yes"), config, context=ctx)
    assert executions == [[SCALE, TRACE], [TRACE, SCALE]]
    assert out["found"] == {TRACE: ["trace.md"], SCALE: ["scale.md"]}
