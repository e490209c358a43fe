"""What a client learns when a run fails: the graph's own errors as they are, database errors as nothing."""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout

from server.runs.errors import public_error

RID = "00000000-0000-4000-8000-000000000001"
GENERIC = {
    "error": "InternalError",
    "message": f"the run failed because of an internal error; see the server log for run {RID}",
}


def _raised(exc: BaseException, *, cause: BaseException | None = None, context: BaseException | None = None):
    exc.__cause__, exc.__context__ = cause, context
    return exc


def test_graph_errors_keep_their_type_and_message():
    assert public_error(ValueError("kaboom"), RID) == {"error": "ValueError", "message": "kaboom"}
    assert public_error(_raised(RuntimeError("tool said no"), cause=KeyError("x")), RID) == {
        "error": "RuntimeError",
        "message": "tool said no",
    }


def test_database_errors_are_scrubbed_even_when_wrapped():
    db = psycopg.errors.UniqueViolation('duplicate key value violates unique constraint "keel_runs_pkey"')
    cases = [
        db,
        psycopg.OperationalError("connection to server at 10.0.0.5 port 5432 failed: password=hunter2"),
        PoolTimeout("couldn't get a connection after 30.00 sec"),
        _raised(RuntimeError(f"store write failed: {db}"), cause=db),
        _raised(ValueError("while saving"), context=_raised(RuntimeError("wrapper"), cause=db)),
        ExceptionGroup("several", [ValueError("fine"), PoolTimeout("pool exhausted")]),
    ]
    for exc in cases:
        assert public_error(exc, RID) == GENERIC, exc
