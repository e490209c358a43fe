"""The turn rule on plain states: a turn answers one human message; nothing of it leaks into the next."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.runtime import Runtime

from agent.context import Context
from agent.nodes.retrieve import continues_turn, retrieve
from agent.render import NOT_EXECUTED, answer_unanswered_tool_calls, build_prompt
from agent.specialists.researcher import r_retrieve
from agent.state import State

Q1 = HumanMessage(content="How do workers scale out?", id="h1")
Q2 = HumanMessage(content="How do I send traces?", id="h2")


def revising(*messages, **fields) -> State:
    """A turn for Q1 that the critic sent back, as a run stopped between critique and retrieve leaves it."""
    return {
        "messages": list(messages or [Q1]),
        "phase": "revise",
        "turn_of": "h1",
        "question": Q1.content,
        "query": "workers scale out revised",
        "revisions": 1,
        "steps": 3,
        **fields,
    }


@pytest.mark.parametrize(
    "state",
    [
        revising(),
        revising(
            Q1,
            AIMessage(content="", tool_calls=[{"name": "calculator", "args": {}, "id": "c1"}]),
            ToolMessage(content="2", tool_call_id="c1"),
        ),  # the turn's own tool round trip
        revising(HumanMessage(content=Q1.content), turn_of=""),  # messages without ids (plain states)
    ],
    ids=["revise", "revise after tools", "no ids"],
)
def test_the_critics_revision_continues_the_turn(state):
    assert continues_turn(state)


@pytest.mark.parametrize(
    "state",
    [
        revising(Q1, Q2),  # a new message after a run stopped in "revise"
        revising(Q1, AIMessage(content="an answer"), Q2),
        revising(
            HumanMessage(content="How do I send traces?", id="h1")
        ),  # edited in place: same id, new text
        revising(HumanMessage(content=Q1.content, id="h9")),  # the same words sent again are a new message
        revising(AIMessage(content="no human message at all")),
        {**revising(), "phase": "answer"},  # re-entering retrieve from START outside a revision
        {**revising(), "phase": "done"},
        {"messages": [Q1]},  # a thread's first turn
    ],
    ids=[
        "new message",
        "after an answer",
        "edited in place",
        "same words, new message",
        "no human",
        "phase answer",
        "phase done",
        "first turn",
    ],
)
def test_anything_else_is_a_new_turn(state):
    assert not continues_turn(state)


def test_checkpoints_from_before_turn_of_are_judged_by_the_question():
    old = revising()
    del old["turn_of"]
    assert continues_turn(old)
    assert not continues_turn({**old, "messages": [Q1, Q2]})


def test_multimodal_question_text():
    msg = HumanMessage(
        content=[{"type": "text", "text": "How do"}, {"type": "text", "text": "workers scale?"}], id="h1"
    )
    assert continues_turn(revising(msg, question="How do workers scale?"))
    assert not continues_turn(revising(msg, question="How do workers scale out?"))


def _runtime(**ctx) -> Runtime:
    return Runtime(context=Context(**ctx), store=None)


async def test_a_new_turn_resets_every_per_turn_field():
    """Only `messages` and `summary` outlive a turn; every other field of State is set afresh."""
    stale = revising(
        Q1,
        Q2,
        passages=[{"index": 1, "text": "old", "source": "old.md"}],
        sources=[{"index": 1, "source": "old.md"}],
        draft="old draft",
        draft_id="ai-1",
        best_answer="old best",
        best_score=0.4,
        critique={"score": 0.4},
        tool_calls=5,
        steps=20,
        answer="old answer",
        status="budget_exhausted:max_steps",
        summary="earlier turns",
    )
    update = await retrieve(stale, _runtime())
    assert set(State.__annotations__) - {"messages", "summary"} <= set(update), (
        "a per-turn field is not reset"
    )
    assert update["turn_of"] == "h2" and update["question"] == update["query"] == Q2.content
    assert update["steps"] == 1 and update["revisions"] == 0 and update["tool_calls"] == 0
    assert update["status"] == "running" and update["phase"] == "answer"
    assert update["passages"] == update["sources"] == [] and update["critique"] == {}
    assert update["best_answer"] == update["draft"] == update["draft_id"] == update["answer"] == ""
    assert update["best_score"] == -1.0
    assert "messages" not in update and "summary" not in update


async def test_a_revision_keeps_its_budgets_and_revised_query():
    update = await retrieve(revising(), _runtime())
    assert update == {"passages": [], "sources": [], "steps": 4, "phase": "answer"}


async def test_a_new_turn_over_the_step_budget_ends_with_its_own_question():
    update = await retrieve(revising(Q1, Q2, best_answer="old best"), _runtime(max_steps=0))
    assert update["question"] == Q2.content and update["status"] == "budget_exhausted:max_steps"
    assert "old best" not in update["answer"]


# ----------------------------------------------------------------- tool calls a stopped turn left behind


CALL = {"name": "calculator", "args": {"expression": "6*7"}, "id": "c1"}
CALL2 = {"name": "search_docs", "args": {"query": "x"}, "id": "c2"}


def test_unanswered_tool_calls_get_an_error_result_in_the_prompt():
    asked = AIMessage(content="", tool_calls=[CALL, CALL2], id="ai-1")
    done = ToolMessage(content="42", tool_call_id="c1", name="calculator")
    out = answer_unanswered_tool_calls([Q1, asked, done, Q2])
    assert out[:3] == [Q1, asked, done] and out[-1] is Q2
    filler = out[3]
    assert isinstance(filler, ToolMessage) and filler.tool_call_id == "c2" and filler.status == "error"
    assert filler.content == NOT_EXECUTED and filler.name == "search_docs"
    assert answer_unanswered_tool_calls([Q1, asked])[-2:] == [
        ToolMessage(content=NOT_EXECUTED, tool_call_id="c1", name="calculator", status="error"),
        ToolMessage(content=NOT_EXECUTED, tool_call_id="c2", name="search_docs", status="error"),
    ]


def test_answered_tool_calls_are_left_alone():
    history = [
        Q1,
        AIMessage(content="", tool_calls=[CALL]),
        ToolMessage(content="42", tool_call_id="c1"),
        AIMessage(content="It is 42."),
    ]
    assert answer_unanswered_tool_calls(history) == history


def test_prompt_of_the_next_turn_answers_the_stopped_turns_tool_calls():
    asked = AIMessage(content="", tool_calls=[CALL], id="ai-1")
    prompt = build_prompt({"messages": [Q1, asked, Q2], "passages": []})
    i = next(i for i, m in enumerate(prompt) if m is asked)
    assert isinstance(prompt[i + 1], ToolMessage) and prompt[i + 1].tool_call_id == "c1"
    assert prompt[-1] is Q2


# ----------------------------------------------------------------------- the researcher specialist


async def test_researcher_starts_each_question_from_its_input_only():
    """Channels of an earlier call in the same checkpoint namespace do not survive the first node."""
    leftover = {
        "question": "new question",
        "findings": "old findings",
        "score": 0.9,
        "passages": [{"index": 1, "source": "old.md"}],
        "sources": [{"index": 1, "source": "old.md"}],
    }
    update = await r_retrieve(leftover, _runtime())
    assert update == {"passages": [], "sources": [], "findings": "", "score": 0.0}
