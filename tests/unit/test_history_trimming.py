"""Short-term memory stays bounded: earlier turns are trimmed to a token budget, whole turns only."""

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent.history import approx_tokens, trim_history
from agent.render import build_prompt


def turn(i: int, with_tool: bool = False) -> list:
    msgs = [HumanMessage(content=f"question {i} " + "x" * 200)]
    if with_tool:
        msgs += [
            AIMessage(
                content="", tool_calls=[{"name": "calculator", "args": {"expression": "1+1"}, "id": f"c{i}"}]
            ),
            ToolMessage(content="2", tool_call_id=f"c{i}"),
        ]
    msgs.append(AIMessage(content=f"answer {i} " + "y" * 200))
    return msgs


def test_trimming_keeps_recent_whole_turns_under_budget():
    history = [m for i in range(50) for m in turn(i, with_tool=i % 2 == 0)]
    kept = trim_history(history, budget=600)
    assert kept and isinstance(kept[0], HumanMessage)
    assert sum(approx_tokens(m) for m in kept) <= 600
    assert kept[-1] is history[-1], "the most recent turn is kept"
    # Tool pairs intact: every ToolMessage's call is in the kept messages, and every call has its result.
    calls = {tc["id"] for m in kept if isinstance(m, AIMessage) for tc in m.tool_calls}
    results = {m.tool_call_id for m in kept if isinstance(m, ToolMessage)}
    assert calls == results


def test_nothing_fits_means_no_earlier_history():
    history = turn(1) + turn(2)
    assert trim_history(history, budget=10) == []
    assert trim_history(history, budget=100_000) == history


def test_prompt_always_keeps_the_current_turn():
    messages = [m for i in range(30) for m in turn(i, True)] + [HumanMessage(content="now?")]
    prompt = build_prompt({"messages": messages, "passages": []}, history_tokens=300)
    assert prompt[-1].content == "now?" and prompt[-2].name == "retrieved_documents"
    assert len(prompt) < 12
