"""How a run's failure is told apart and shaped: database errors, fence errors, and the errors a client sees."""

from __future__ import annotations

from typing import Any

import psycopg


class StaleResume(Exception):
    """A resume command for a thread that is not waiting for one."""


def is_database_error(exc: BaseException) -> bool:
    """Is `exc`, or anything it wraps (cause, context, group), a Postgres driver or pool error?"""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, psycopg.Error) or type(e).__module__.split(".")[0] in ("psycopg", "psycopg_pool"):
            return True
        stack += [e.__cause__, e.__context__, *(e.exceptions if isinstance(e, BaseExceptionGroup) else ())]
    return False


def is_fence_error(exc: BaseException) -> bool:
    """Did the database refuse a write because this worker lost the run's lease (the fence trigger's KL001)?"""
    return getattr(getattr(exc, "diag", None), "sqlstate", None) == "KL001" or "lost its lease" in str(exc)


def public_error(exc: BaseException, run_id: str) -> dict[str, Any]:
    """The error a client sees: a graph's own exception keeps its type and message; a database or pool
    error (even wrapped in another exception) says nothing about SQL, tables or connections."""
    if is_database_error(exc):
        return {
            "error": "InternalError",
            "message": f"the run failed because of an internal error; see the server log for run {run_id}",
        }
    return {"error": type(exc).__name__, "message": str(exc)}


def attempts_exhausted(attempt: int) -> dict[str, Any]:
    """The error of a run whose workers kept dying (the reaper's dead-letter message, same words)."""
    return {
        "error": "RunAttemptsExhausted",
        "message": f"the worker running this run died {attempt} times (lease expired each time); giving up",
    }
