"""Short-term memory: earlier turns within a token budget; older turns folded into a running summary.

Two modes (`Context.history`):

- "summarize" (default): when the earlier turns exceed `history_tokens`, the oldest whole turns are summarized
  into the thread's `summary` (one extra model call, never streamed to the client) and removed from
  `messages`, keeping the newest turns up to half the budget. The thread's state, and so every checkpoint,
  stays bounded however long the conversation runs.
- "trim": every message stays in the thread; the prompt only leaves out the turns over the budget.

Cuts fall only where a human message starts a turn, so an AI message with tool calls always keeps its tool
results (providers reject orphaned tool messages).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, TypedDict, TypeVar

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.constants import TAG_NOSTREAM

from agent.prompts import SUMMARY_REQUEST, SUMMARY_SYSTEM_PROMPT

M = TypeVar("M", bound=BaseMessage)
"""A message type: the history functions return the messages they were given, so keep their type."""

TRANSCRIPT_CHARS = 2000
"""Longest text of one message in the transcript sent for summarizing (the rest is elided)."""


def approx_tokens(message: BaseMessage) -> int:
    """A cheap token estimate (4 characters a token) of a message, tool calls included."""
    size = len(str(message.content)) + sum(
        len(str(tc.get("args"))) + len(tc.get("name", ""))
        for tc in getattr(message, "tool_calls", None) or []
    )
    return size // 4 + 4


def trim_history(history: Sequence[M], budget: int) -> list[M]:
    """The most recent whole turns of `history` that fit in `budget` tokens."""
    total, start = 0, len(history)
    for i in range(len(history) - 1, -1, -1):
        total += approx_tokens(history[i])
        if total > budget:
            break
        if isinstance(history[i], HumanMessage):
            start = i
    return list(history[start:])


def current_turn_start(messages: Sequence[BaseMessage]) -> int:
    """Index of the last human message (this turn's question); len(messages) when there is none."""
    return max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=len(messages))


def turns_to_fold(messages: Sequence[M], budget: int) -> list[M]:
    """The oldest earlier turns to summarize away: none while the earlier turns fit in `budget`; otherwise
    all but the newest turns that fit in half of it (so folding happens every few turns, not every turn)."""
    earlier = messages[: current_turn_start(messages)]
    if sum(approx_tokens(m) for m in earlier) <= budget:
        return []
    kept = trim_history(earlier, budget // 2)
    return [m for m in earlier[: len(earlier) - len(kept)] if m.id]


def _line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= TRANSCRIPT_CHARS else text[:TRANSCRIPT_CHARS] + " …"


def transcript(messages: Sequence[BaseMessage]) -> str:
    """One line per message: `user: …`, `assistant: …`, `assistant called NAME {args}`, `tool NAME: …`."""
    lines: list[str] = []
    for m in messages:
        if isinstance(m, HumanMessage):
            lines.append("user: " + _line(m.text))
        elif isinstance(m, AIMessage):
            if m.text.strip():
                lines.append("assistant: " + _line(m.text))
            for call in m.tool_calls:
                lines.append(
                    f"assistant called {call['name']} " + _line(json.dumps(call.get("args"), default=str))
                )
        elif isinstance(m, ToolMessage):
            lines.append(f"tool {m.name or 'result'}: " + _line(m.text))
        else:
            lines.append(f"{m.type}: " + _line(m.text))
    return "\n".join(lines)


def cap_summary(text: str, tokens: int) -> str:
    """The summary within `tokens` (4 characters a token): its newest lines, the oldest dropped first."""
    limit = max(tokens, 0) * 4
    lines = [line.rstrip() for line in str(text).strip().splitlines() if line.strip()]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + 1 > limit:
            if not kept:  # one line longer than the whole budget: keep its beginning
                kept.append(line[: max(limit - 2, 0)] + " …" if limit > 2 else "")
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(reversed([k for k in kept if k]))


class Fold(TypedDict):
    """A fold's state update: the new running summary, and the removal of the folded messages."""

    summary: str
    messages: list[RemoveMessage]


async def fold_history(
    messages: Sequence[BaseMessage], summary: str, model: Any, *, budget: int, summary_tokens: int
) -> Fold | None:
    """Summarize the turns over budget into `summary`; the state update (new summary, RemoveMessages) or None."""
    fold = turns_to_fold(messages, budget)
    if not fold:
        return None
    request = SUMMARY_REQUEST.format(
        summary=html.escape(summary or "(none)", quote=False),
        conversation=html.escape(transcript(fold), quote=False),
    )
    # Tagged nostream: the summary is bookkeeping, not a reply, so it never reaches a client's token stream.
    reply = await model.ainvoke(
        [SystemMessage(content=SUMMARY_SYSTEM_PROMPT), HumanMessage(content=request)],
        config={"tags": [TAG_NOSTREAM], "run_name": "summarize_history"},
    )
    new_summary = cap_summary(reply.text, summary_tokens)
    return {"summary": new_summary, "messages": [RemoveMessage(id=m.id) for m in fold if m.id]}


def apply_fold(messages: Sequence[M], update: Fold) -> list[M]:
    """`messages` as they will be once `update`'s removals are applied."""
    gone = {m.id for m in update["messages"]}
    return [m for m in messages if m.id not in gone]
