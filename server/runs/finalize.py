"""Finalizing a run whose worker died on its last attempt, after it had written checkpoints.

No node runs again. If its graph had completed (or stopped at an interrupt) before the worker died, only
the bookkeeping was missing: the outcome the checkpoint holds is recorded. Otherwise the run is
dead-lettered as a poison run (`RunAttemptsExhausted`).
"""

from __future__ import annotations

import logging

from server.runs.attempt import RunHandle, last_event, open_writer, prepare, recorded_modes
from server.runs.errors import attempts_exhausted
from server.runs.outcome import OutcomeRecorder
from server.runs.store import Outcome
from server.runs.stream import output_values
from server.serde import jsonable

log = logging.getLogger("keel.runs")


async def finalize(outcomes: OutcomeRecorder, h: RunHandle) -> Outcome:
    """Record what the checkpoints of a run on its last attempt say, or give the run up."""
    c, pool = h.claim, outcomes.pool
    h.phase = "settling"
    start_seq, _ = await prepare(pool, c)
    writer = open_writer(pool, h, start_seq)
    snapshot = await outcomes.graph.aget_state({"configurable": {"thread_id": c.thread_id}})
    own = (snapshot.metadata or {}).get("run_id") == c.run_id
    at_interrupt = any(t.interrupts for t in snapshot.tasks)
    if own and (not snapshot.next or at_interrupt):
        log.warning(
            "run's worker died after its last checkpoint (attempt %d); finishing it from there", c.attempt
        )
        values = output_values(outcomes.graph, jsonable(snapshot.values))
        if "values" in recorded_modes(c) and await last_event(pool, c) != "values":
            writer.publish("values", values)  # the final values event came after the last checkpoint
        return await outcomes.settle(h, values)
    log.warning("run's worker died %d times; giving up", c.attempt)
    return await outcomes.failed(h, attempts_exhausted(c.attempt))
