"""What can go wrong with the database: unavailable (with the reason), or transient (worth another try)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg

from tools.transient import is_transient

log = logging.getLogger("keel.db")


class DatabaseUnavailable(RuntimeError):
    """Postgres could not be reached or is missing something Keel needs."""


class EmbeddingMismatch(DatabaseUnavailable):
    """The vector index was built with another embedding model or size."""


def is_transient_error(exc: BaseException) -> bool:
    """A transient failure of the database itself (Keel's one classifier, tools.transient, asked about
    psycopg's errors only): Postgres unreachable, a connection lost mid-way, a deadlock or serialization
    failure, or the pool starved or closing. Other transient errors (a provider's 429, a network timeout) are
    not the database's, so they do not make a run or a request wait for it."""
    return isinstance(exc, psycopg.Error) and is_transient(exc)


async def retry_transient(attempt: Any, *, seconds: float = 15.0) -> Any:
    """`await attempt(n)` (n = 0, 1, ...) until it does not fail with a transient error, for up to `seconds`.

    Only for work that is safe to repeat; `n > 0` tells the attempt that an earlier one may have committed.
    """
    deadline = time.monotonic() + seconds
    n = 0
    while True:
        try:
            return await attempt(n)
        except Exception as exc:
            if not is_transient_error(exc) or time.monotonic() >= deadline:
                raise
            log.warning("database unavailable (%s); trying again", " ".join(str(exc).split())[:200])
            await asyncio.sleep(min(0.1 * 2 ** (n + 1), 1.0))
            n += 1
