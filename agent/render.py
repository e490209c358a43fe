"""Prompt rendering: the templates of agent/prompts.py filled from the graph's state.

Pure functions (no model, no I/O), shared by the nodes and the researcher specialist.
"""

from __future__ import annotations

import html
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.tool import ToolCall

from agent.history import current_turn_start, trim_history
from agent.prompts import DOCUMENT_TEMPLATE, DOCUMENTS_TEMPLATE, NO_DOCUMENTS, SUMMARY_SECTION, SYSTEM_PROMPT
from agent.state import State

NOT_EXECUTED = "Not executed: the turn that asked for this call ended before it ran."
"""The result the prompt gives a tool call of an earlier turn that never got one."""


def _attr(value: Any) -> str:
    # Headings contain " > "; escape so a tag always ends where the parser (or a model) expects.
    return html.escape(str(value or "").replace("\n", " "), quote=True)


def documents_block(passages: list[dict[str, Any]]) -> str:
    """Retrieved passages, numbered, with their sources, marked as data."""
    if not passages:
        return NO_DOCUMENTS
    docs = "\n".join(
        DOCUMENT_TEMPLATE.format(
            index=p["index"],
            source=_attr(p.get("source")),
            heading=_attr(p.get("heading")),
            # Escaped so a document cannot close the data block and pose as instructions.
            text=html.escape(str(p.get("text", "")).strip(), quote=False),
        )
        for p in passages
    )
    return DOCUMENTS_TEMPLATE.format(documents=docs)


def answer_unanswered_tool_calls(messages: list[BaseMessage]) -> list[BaseMessage]:
    """`messages` with an error result after each tool call that never got one.

    A turn stopped before execute_tools ran (cancelled, interrupted, left waiting for an approval) keeps the
    model's tool calls in the thread without results; providers reject such a history, so the prompt of the
    next turn says they were not executed. The thread's own messages stay as they are.
    """
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    out: list[BaseMessage] = []
    missing: list[ToolCall] = []
    for msg in [*messages, None]:
        if missing and not isinstance(msg, ToolMessage):
            out.extend(
                ToolMessage(content=NOT_EXECUTED, tool_call_id=c["id"], name=c.get("name"), status="error")
                for c in missing
            )
            missing = []
        if msg is None:
            break
        out.append(msg)
        if isinstance(msg, AIMessage):
            missing = [c for c in msg.tool_calls if c.get("id") and c["id"] not in answered]
    return out


def build_prompt(state: State, history_tokens: int = 3000) -> list[BaseMessage]:
    """System prompt (with the summary of folded turns), earlier turns (trimmed to budget), the passages as
    data, then this turn."""
    messages: list[BaseMessage] = list(state.get("messages", []))
    docs = HumanMessage(content=documents_block(state.get("passages", [])), name="retrieved_documents")
    # The passages go right before this turn's question, so tool calls and results follow the question.
    last_human = current_turn_start(messages)
    earlier = answer_unanswered_tool_calls(trim_history(messages[:last_human], history_tokens))
    system = SYSTEM_PROMPT
    if state.get("summary"):
        system += SUMMARY_SECTION.format(summary=html.escape(str(state["summary"]), quote=False))
    return [SystemMessage(content=system), *earlier, docs, *messages[last_human:]]
