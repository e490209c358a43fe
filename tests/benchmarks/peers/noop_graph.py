"""The peer benchmark's no-op graph: four nodes a -> b -> c -> d, each appending its name to `log`.

It imports LangGraph only, so every peer's virtualenv can load it by path from a langgraph.json. Node b can be
asked (in the input) to append its pid to a file and then sleep, so the recovery row can SIGKILL the process
running a run while b is in flight. No `from __future__ import annotations`: servers that load the file by
path (Aegra) resolve the state's annotations against the module.
"""

import asyncio
import operator
import os
from typing import Annotated

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    touch: str
    """b appends its pid here when it starts"""
    sleep: float
    """seconds b sleeps (asyncio) after touching"""


def _node(name: str):
    async def step(state: State) -> State:
        if name == "b" and state.get("touch"):
            with open(state["touch"], "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()}\n")
        if name == "b" and state.get("sleep"):
            await asyncio.sleep(float(state["sleep"]))
        return {"log": [name]}

    step.__name__ = name
    return step


builder = StateGraph(State)
for _n in ("a", "b", "c", "d"):
    builder.add_node(_n, _node(_n))
builder.add_edge(START, "a")
builder.add_edge("a", "b")
builder.add_edge("b", "c")
builder.add_edge("c", "d")
builder.add_edge("d", END)
graph = builder.compile(name="noop")
