"""Post-run reflection: keep durable facts the user stated (preferences, decisions) as long-term memories.

With a model configured, the model extracts them (structured output); offline, a transparent rule keeps
the user's sentences that state a preference, an identity fact or a decision. Memories are keyed by
content, so reflecting twice on the same conversation stores nothing new.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langgraph.store.base import GetOp, PutOp
from pydantic import BaseModel, Field

from agent.context import Context
from agent.models import get_chat_model
from tools.memory_tools import _key, memories_namespace

_FACT = re.compile(
    r"\b(remember that|please remember|note that|i prefer|i like|i love|i hate|i use|i work|i live|i am|i'm|"
    r"my name is|my [a-z]+ is|we decided|we agreed|always|never)\b",
    re.I,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

REFLECTION_PROMPT = """Extract durable facts about the user from their messages: preferences, identity,
decisions, standing instructions. Only facts the user stated; no guesses; each fact one short sentence
starting with "The user". Return an empty list when there are none."""


class Facts(BaseModel):
    facts: list[str] = Field(default_factory=list, description="Durable facts, one short sentence each")


def _user_texts(messages: list[BaseMessage]) -> list[str]:
    return [
        str(m.content)
        for m in messages
        if isinstance(m, HumanMessage) and not str(m.content).startswith("/tool")
    ]


def offline_facts(messages: list[BaseMessage]) -> list[str]:
    """The user's sentences that state something durable (a documented rule, not a model)."""
    out: list[str] = []
    for text in _user_texts(messages):
        for sentence in _SENTENCE.split(text.strip()):
            s = sentence.strip()
            if s.endswith("?"):
                continue  # questions state nothing
            if _FACT.search(s) and 3 <= len(s.split()) <= 40:
                s = re.sub(r"^(please )?(remember that|note that|remember)\s+", "", s, flags=re.I)
                out.append(f"The user said: {s[0].upper() + s[1:] if s else s}")
    return list(dict.fromkeys(out))


async def extract_facts(messages: list[BaseMessage], ctx: Context) -> list[str]:
    if not ctx.model:
        return offline_facts(messages)
    model = get_chat_model("critic", ctx).with_structured_output(Facts)
    result = await model.ainvoke(
        [SystemMessage(content=REFLECTION_PROMPT), HumanMessage(content="\n\n".join(_user_texts(messages)))]
    )
    facts = result.facts if isinstance(result, Facts) else Facts.model_validate(result).facts
    return [f.strip() for f in facts if f and f.strip()]


async def reflect(store: Any, messages: list[BaseMessage], ctx: Context) -> list[str]:
    """Store new durable facts in the user's memory namespace; returns the facts written (deduplicated)."""
    ns = memories_namespace(ctx.user_id)
    facts = {_key(fact): fact for fact in await extract_facts(messages, ctx)}
    if not facts:
        return []
    # Two round trips whatever the number of facts, and the new ones embedded in one call.
    found = await store.abatch([GetOp(ns, key) for key in facts])
    new = {key: fact for (key, fact), item in zip(facts.items(), found, strict=True) if item is None}
    if new:
        await store.abatch(
            [PutOp(ns, key, {"text": fact, "source": "reflection"}) for key, fact in new.items()]
        )
    return list(new.values())
