"""User memory: reflection keeps durable facts (once), and later threads recall them, per user only."""

from __future__ import annotations

import uuid

from langchain_core.messages import AIMessage, HumanMessage

from agent.context import Context
from agent.graph import builder
from agent.reflection import offline_facts, reflect
from tools.memory_tools import memories_namespace


def test_offline_fact_rule():
    msgs = [
        HumanMessage(content="Hi. I prefer answers in bullet points. What is Keel?"),
        AIMessage(content="Keel is..."),
        HumanMessage(content="Please remember that my team runs Postgres 17."),
        HumanMessage(content="Do I like tea?"),
        HumanMessage(content='/tool remember {"fact": "x"}'),
    ]
    assert offline_facts(msgs) == [
        "The user said: I prefer answers in bullet points.",
        "The user said: My team runs Postgres 17.",
    ]


async def test_reflection_then_recall_in_a_new_thread(db):
    graph = builder.compile(checkpointer=db.checkpointer, store=db.store, name="agent")
    erin = Context(user_id="erin")
    first = {"configurable": {"thread_id": str(uuid.uuid4())}}
    out = await graph.ainvoke(
        {"messages": [HumanMessage(content="I use Kubernetes for every deployment.")]}, first, context=erin
    )
    assert await reflect(db.store, out["messages"], erin) == [
        "The user said: I use Kubernetes for every deployment."
    ]
    assert await reflect(db.store, out["messages"], erin) == [], "deduplicated by content"
    second = {"configurable": {"thread_id": str(uuid.uuid4())}}
    out = await graph.ainvoke(
        {"messages": [HumanMessage(content="Which platform do I use for deployment?")]}, second, context=erin
    )
    state = (await graph.aget_state(second)).values
    recalled = [p for p in state["passages"] if p["source"] == "memory"]
    assert recalled and "Kubernetes" in recalled[0]["text"]
    assert "Kubernetes" in out["answer"]
    # Another user asking the same thing recalls nothing of erin's.
    frank = Context(user_id="frank")
    third = {"configurable": {"thread_id": str(uuid.uuid4())}}
    await graph.ainvoke(
        {"messages": [HumanMessage(content="Which platform do I use for deployment?")]}, third, context=frank
    )
    assert not [p for p in (await graph.aget_state(third)).values["passages"] if p["source"] == "memory"]
    assert await db.store.asearch(memories_namespace("frank"), query="Kubernetes") == []
