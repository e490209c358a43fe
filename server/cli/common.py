"""What the `keel` commands share: the error line and a database opened for one command."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

from server.settings import Settings


def fail(msg: str) -> int:
    print(f"keel: error: {msg}", file=sys.stderr)
    return 1


async def with_db(settings: Settings, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from server.service import open_db

    db = await open_db(settings)
    try:
        return await fn(db)
    finally:
        await db.close()
