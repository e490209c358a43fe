"""The cron store: every SQL statement on `keel_crons`, in one place (the table itself is migration 9).

As in server/runs/store.py, statements are named constants and the functions run them on a connection the
caller owns, so the caller decides the transaction: the scheduler claims due crons, records their runs and
advances them in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from server.runs.store import fetchall, fetchone

CRON_COLUMNS = (
    "cron_id, assistant_id, thread_id, user_id, owner, schedule, timezone, end_time, on_run_completed, "
    "enabled, payload, metadata, next_run_at, last_run_id, created_at, updated_at"
)

SORT_COLUMNS = {
    "cron_id": "cron_id",
    "assistant_id": "assistant_id",
    "thread_id": "thread_id",
    "next_run_date": "next_run_at",
    "end_time": "end_time",
    "created_at": "created_at",
    "updated_at": "updated_at",
}

INSERT_CRON = (
    "INSERT INTO keel_crons (cron_id, assistant_id, thread_id, user_id, owner, schedule, timezone, end_time, "
    "on_run_completed, enabled, payload, metadata, next_run_at) "
    f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {CRON_COLUMNS}"
)
SELECT_CRON = f"SELECT {CRON_COLUMNS} FROM keel_crons WHERE cron_id = %s"
LOCK_USER_CRON = f"SELECT {CRON_COLUMNS} FROM keel_crons WHERE cron_id = %s AND user_id = %s FOR UPDATE"
UPDATE_CRON = (
    "UPDATE keel_crons SET schedule = %s, timezone = %s, end_time = %s, on_run_completed = %s, enabled = %s, "
    f"payload = %s, metadata = %s, next_run_at = %s, updated_at = now() WHERE cron_id = %s RETURNING {CRON_COLUMNS}"
)
DELETE_USER_CRON = "DELETE FROM keel_crons WHERE cron_id = %s AND user_id = %s RETURNING cron_id"

# The scheduler's claim: due, enabled, not past its end. SKIP LOCKED lets every worker's scheduler poll at once;
# a row one of them holds is invisible to the others until its transaction (run recorded, next_run_at advanced)
# commits, and then it is no longer due. `now()` is the transaction's start, so one clock (Postgres's) decides.
CLAIM_DUE = (
    f"SELECT {CRON_COLUMNS}, now() AS db_now FROM keel_crons "
    "WHERE enabled AND next_run_at <= now() AND (end_time IS NULL OR end_time > now()) "
    "ORDER BY next_run_at LIMIT %s FOR UPDATE SKIP LOCKED"
)
ADVANCE = "UPDATE keel_crons SET next_run_at = %s, last_run_id = coalesce(%s, last_run_id) WHERE cron_id = %s"
NEXT_DUE = (
    "SELECT extract(epoch FROM min(next_run_at) - now()) AS wait_s FROM keel_crons "
    "WHERE enabled AND (end_time IS NULL OR end_time > now())"
)
SET_NEXT_RUN_AT = "UPDATE keel_crons SET next_run_at = %s WHERE cron_id = %s RETURNING cron_id"


def filters_sql(
    user_id: str,
    *,
    assistant_id: str | None = None,
    thread_id: str | None = None,
    enabled: bool | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[str, list[Any]]:
    """WHERE clause and parameters for a user's crons matching the search/count filters."""
    where = ["user_id = %s"]
    params: list[Any] = [user_id]
    if assistant_id is not None:
        where.append("assistant_id = %s")
        params.append(assistant_id)
    if thread_id is not None:
        where.append("thread_id = %s")
        params.append(thread_id)
    if enabled is not None:
        where.append("enabled = %s")
        params.append(enabled)
    if metadata:
        where.append("metadata @> %s")
        params.append(Jsonb(metadata))
    return " AND ".join(where), params


def search_sql(where: str, sort_by: str, sort_order: str) -> str:
    """A page of crons (LIMIT, OFFSET parameters last); `sort_by`/`sort_order` are validated enum values."""
    column = SORT_COLUMNS[sort_by]
    direction = "ASC" if sort_order == "asc" else "DESC"
    return (
        f"SELECT {CRON_COLUMNS} FROM keel_crons WHERE {where} "
        f"ORDER BY {column} {direction} NULLS LAST, cron_id {direction} LIMIT %s OFFSET %s"
    )


def count_sql(where: str) -> str:
    return f"SELECT count(*) AS n FROM keel_crons WHERE {where}"


async def insert_cron(
    conn: psycopg.AsyncConnection[Any],
    *,
    cron_id: str,
    assistant_id: str,
    thread_id: str | None,
    user_id: str,
    owner: dict[str, Any],
    schedule: str,
    timezone: str | None,
    end_time: datetime | None,
    on_run_completed: str | None,
    enabled: bool,
    payload: dict[str, Any],
    metadata: dict[str, Any],
    next_run_at: datetime,
) -> dict[str, Any]:
    row = await fetchone(
        conn,
        INSERT_CRON,
        (
            cron_id,
            assistant_id,
            thread_id,
            user_id,
            Jsonb(owner),
            schedule,
            timezone,
            end_time,
            on_run_completed,
            enabled,
            Jsonb(payload),
            Jsonb(metadata),
            next_run_at,
        ),
    )
    assert row is not None  # INSERT ... RETURNING
    return row


async def get_cron(conn: psycopg.AsyncConnection[Any], cron_id: str) -> dict[str, Any] | None:
    return await fetchone(conn, SELECT_CRON, (cron_id,))


async def lock_user_cron(
    conn: psycopg.AsyncConnection[Any], cron_id: str, user_id: str
) -> dict[str, Any] | None:
    return await fetchone(conn, LOCK_USER_CRON, (cron_id, user_id))


async def update_cron(
    conn: psycopg.AsyncConnection[Any], cron_id: str, row: dict[str, Any]
) -> dict[str, Any]:
    """Write a locked cron's new settings (all of them, as `row` holds them)."""
    out = await fetchone(
        conn,
        UPDATE_CRON,
        (
            row["schedule"],
            row["timezone"],
            row["end_time"],
            row["on_run_completed"],
            row["enabled"],
            Jsonb(row["payload"]),
            Jsonb(row["metadata"]),
            row["next_run_at"],
            cron_id,
        ),
    )
    assert out is not None  # the row is locked by the caller's transaction
    return out


async def delete_user_cron(conn: psycopg.AsyncConnection[Any], cron_id: str, user_id: str) -> bool:
    return await fetchone(conn, DELETE_USER_CRON, (cron_id, user_id)) is not None


async def search(
    conn: psycopg.AsyncConnection[Any],
    where: str,
    params: list[Any],
    sort_by: str,
    sort_order: str,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    return await fetchall(conn, search_sql(where, sort_by, sort_order), [*params, limit, offset])


async def count(conn: psycopg.AsyncConnection[Any], where: str, params: list[Any]) -> int:
    row = await fetchone(conn, count_sql(where), params)
    assert row is not None  # count(*) always returns one row
    n: int = row["n"]
    return n


async def claim_due(conn: psycopg.AsyncConnection[Any], limit: int) -> list[dict[str, Any]]:
    """Lock up to `limit` due crons for the caller's transaction (others' schedulers skip them)."""
    return await fetchall(conn, CLAIM_DUE, (limit,))


async def advance(
    conn: psycopg.AsyncConnection[Any], cron_id: str, next_run_at: datetime, run_id: str | None
) -> None:
    await conn.execute(ADVANCE, (next_run_at, run_id, cron_id))


async def seconds_to_next_due(conn: psycopg.AsyncConnection[Any]) -> float | None:
    """Seconds until the earliest enabled cron is due (negative when one is overdue); None without crons."""
    row = await fetchone(conn, NEXT_DUE)
    if row is None or row["wait_s"] is None:
        return None
    return float(row["wait_s"])


async def set_next_run_at(conn: psycopg.AsyncConnection[Any], cron_id: str, when: datetime) -> bool:
    """Move a cron's next firing (operators and tests: make a cron due now without waiting for its tick)."""
    return await fetchone(conn, SET_NEXT_RUN_AT, (when, cron_id)) is not None
