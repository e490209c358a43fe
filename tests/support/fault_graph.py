"""A 4-node linear graph (a -> b -> c -> d) whose steps do what the input's `plan` says.

Used by the fault tests and the benchmarks through `KEEL_GRAPH=tests.support.fault_graph:builder`.
With an empty plan it is the no-op 4-node graph. Per node, the plan may ask it to:
  touch: a file path; the node appends "<pid>\n" when it starts (tests watch it to time signals)
  sleep: seconds of `await asyncio.sleep` (an async step)
  block: seconds of `time.sleep` (blocks the event loop, like a bad SDK call)
  kill: "always" (SIGKILL its own process every time it runs)
  interrupt: true (ask for human input; the resume value is recorded)
Every execution of a node is recorded as an effect in the store under ("effects", thread_id), so tests
count executions against Postgres rather than trusting logs.
"""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import time
import uuid
from typing import Annotated, Any

from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from typing_extensions import TypedDict

NODES = ("a", "b", "c", "d")


class FaultState(TypedDict, total=False):
    plan: dict[str, dict[str, Any]]
    log: Annotated[list[str], operator.add]
    inputs: Annotated[list[str], operator.add]
    approved: Any


def _node(name: str):
    async def node(state: FaultState, runtime) -> dict[str, Any]:
        plan = (state.get("plan") or {}).get(name, {})
        thread_id = str(get_config()["configurable"]["thread_id"])
        if plan.get("touch"):
            with open(plan["touch"], "a") as f:
                f.write(f"{os.getpid()}\n")
        update: dict[str, Any] = {"log": [name]}
        if plan.get("interrupt"):
            update["approved"] = interrupt({"question": f"approve {name}?"})
        if runtime.store is not None:
            await runtime.store.aput(("effects", thread_id), f"{name}:{uuid.uuid4()}",
                                     {"node": name, "pid": os.getpid(), "approved": update.get("approved")},
                                     index=False)
        if plan.get("kill") == "always":
            os.kill(os.getpid(), signal.SIGKILL)
        if plan.get("sleep"):
            await asyncio.sleep(float(plan["sleep"]))
        if plan.get("block"):
            time.sleep(float(plan["block"]))
        return update

    node.__name__ = name
    return node


builder = StateGraph(FaultState)
for _n in NODES:
    builder.add_node(_n, _node(_n))
builder.add_edge(START, "a")
for _x, _y in zip(NODES, NODES[1:], strict=False):
    builder.add_edge(_x, _y)
builder.add_edge(NODES[-1], END)

graph = builder.compile(name="agent")
