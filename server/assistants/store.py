"""The assistant store: every SQL statement on `keel_assistants` and `keel_assistant_versions`, in one place.

An assistant row is its current version (the one runs use); every version, the current one included, is also a
row of `keel_assistant_versions`. `owner` is the user who created it, NULL for a system assistant (one per
graph, created at start-up): system assistants are visible to every user, a user's assistants to that user
only. The functions run on a connection the caller owns, so the caller decides the transaction.
"""

from __future__ import annotations

from typing import Any, cast

import psycopg
from psycopg.types.json import Jsonb

COLUMNS = "assistant_id, graph_id, owner, name, description, config, context, metadata, version, created_at, updated_at"
VERSION_COLUMNS = "assistant_id, version, graph_id, name, description, config, context, metadata, created_at"

VISIBLE = "(owner IS NULL OR owner = %(user)s)"
"""The rows a user sees: system assistants and their own."""

GET = f"SELECT {COLUMNS} FROM keel_assistants WHERE assistant_id = %(id)s AND {VISIBLE}"
GET_ANY = f"SELECT {COLUMNS} FROM keel_assistants WHERE assistant_id = %(id)s"
LOCK = f"SELECT {COLUMNS} FROM keel_assistants WHERE assistant_id = %(id)s AND {VISIBLE} FOR UPDATE"
# Concurrent creators of one id (several processes starting at once): one inserts, the others see no row.
INSERT = (
    f"INSERT INTO keel_assistants ({COLUMNS}) "
    "VALUES (%(id)s, %(graph_id)s, %(owner)s, %(name)s, %(description)s, %(config)s, %(context)s, "
    "%(metadata)s, 1, now(), now()) "
    f"ON CONFLICT (assistant_id) DO NOTHING RETURNING {COLUMNS}"
)
INSERT_VERSION = (
    f"INSERT INTO keel_assistant_versions ({VERSION_COLUMNS}) "
    "SELECT assistant_id, version, graph_id, name, description, config, context, metadata, updated_at "
    "FROM keel_assistants WHERE assistant_id = %(id)s"
)
NEXT_VERSION = (
    "SELECT coalesce(max(version), 0) + 1 AS v FROM keel_assistant_versions WHERE assistant_id = %(id)s"
)
UPDATE = (
    "UPDATE keel_assistants SET graph_id = %(graph_id)s, name = %(name)s, description = %(description)s, "
    "config = %(config)s, context = %(context)s, metadata = %(metadata)s, version = %(version)s, updated_at = now() "
    f"WHERE assistant_id = %(id)s RETURNING {COLUMNS}"
)
GET_VERSION = (
    f"SELECT {VERSION_COLUMNS} FROM keel_assistant_versions WHERE assistant_id = %(id)s AND version = %(v)s"
)
DELETE = f"DELETE FROM keel_assistants WHERE assistant_id = %(id)s AND {VISIBLE} RETURNING assistant_id"
# Deleting an assistant ends what depends on it, as langgraph-api does: its active runs are cancelled (by the
# run manager, from these ids), its crons deleted, and with delete_threads the caller's threads it ran on.
ACTIVE_RUNS = (
    "SELECT run_id, thread_id FROM keel_runs WHERE assistant_id = %(id)s AND status = ANY(%(statuses)s)"
)
DELETE_CRONS = "DELETE FROM keel_crons WHERE assistant_id = %(id)s"
THREADS_OF = (
    "SELECT thread_id FROM keel_threads WHERE user_id = %(user)s AND metadata->>'assistant_id' = %(id)s"
)

SORTABLE = ("assistant_id", "graph_id", "name", "created_at", "updated_at")


def filters(
    user: str, graph_id: str | None, name: str | None, metadata: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """WHERE clause and parameters of a search or count (name: case-insensitive substring)."""
    where = [VISIBLE]
    params: dict[str, Any] = {"user": user}
    if graph_id:
        where.append("graph_id = %(graph_id)s")
        params["graph_id"] = graph_id
    if name:
        where.append("strpos(lower(name), lower(%(name)s)) > 0")
        params["name"] = name
    if metadata:
        where.append("metadata @> %(metadata)s")
        params["metadata"] = Jsonb(metadata)
    return " AND ".join(where), params


def search_sql(where: str, sort_by: str, descending: bool) -> str:
    """One page of matches; the name and graph id sort case-insensitively, as langgraph-api sorts them."""
    assert sort_by in SORTABLE  # validated by the request model
    key = f"lower({sort_by})" if sort_by in ("name", "graph_id") else sort_by
    order = "DESC" if descending else "ASC"
    return (
        f"SELECT {COLUMNS} FROM keel_assistants WHERE {where} "
        f"ORDER BY {key} {order}, assistant_id {order} LIMIT %(limit)s OFFSET %(offset)s"
    )


def count_sql(where: str) -> str:
    return f"SELECT count(*) AS n FROM keel_assistants WHERE {where}"


def versions_sql(with_metadata: bool) -> str:
    meta = " AND metadata @> %(metadata)s" if with_metadata else ""
    return (
        f"SELECT {VERSION_COLUMNS} FROM keel_assistant_versions WHERE assistant_id = %(id)s{meta} "
        "ORDER BY version DESC LIMIT %(limit)s OFFSET %(offset)s"
    )


async def fetchone(conn: psycopg.AsyncConnection[Any], sql: str, params: Any = None) -> dict[str, Any] | None:
    """One row (the pool's connections return dict rows), or None."""
    cur = await conn.execute(sql, params)
    return cast("dict[str, Any] | None", await cur.fetchone())


async def fetchall(conn: psycopg.AsyncConnection[Any], sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Every row (dict rows)."""
    cur = await conn.execute(sql, params)
    return cast("list[dict[str, Any]]", await cur.fetchall())


async def insert(
    conn: psycopg.AsyncConnection[Any],
    assistant_id: str,
    *,
    graph_id: str,
    owner: str | None,
    name: str,
    description: str | None,
    config: dict[str, Any],
    context: dict[str, Any],
    metadata: dict[str, Any],
) -> dict[str, Any] | None:
    """A new assistant and its version 1; None when the id exists already (nothing written)."""
    row = await fetchone(
        conn,
        INSERT,
        {
            "id": assistant_id,
            "graph_id": graph_id,
            "owner": owner,
            "name": name,
            "description": description,
            "config": Jsonb(config),
            "context": Jsonb(context),
            "metadata": Jsonb(metadata),
        },
    )
    if row is not None:
        await conn.execute(INSERT_VERSION, {"id": assistant_id})
    return row


async def new_version(
    conn: psycopg.AsyncConnection[Any], assistant_id: str, fields: dict[str, Any]
) -> dict[str, Any] | None:
    """Make `fields` (graph_id, name, description, config, context, metadata) the assistant's next version."""
    v = await fetchone(conn, NEXT_VERSION, {"id": assistant_id})
    assert v is not None  # an aggregate always answers
    row = await set_current(conn, assistant_id, fields, int(v["v"]))
    if row is not None:
        await conn.execute(INSERT_VERSION, {"id": assistant_id})
    return row


async def set_current(
    conn: psycopg.AsyncConnection[Any], assistant_id: str, fields: dict[str, Any], version: int
) -> dict[str, Any] | None:
    """Make the assistant's current row these fields, as `version`."""
    return await fetchone(
        conn,
        UPDATE,
        {
            "id": assistant_id,
            "graph_id": fields["graph_id"],
            "name": fields["name"],
            "description": fields["description"],
            "config": Jsonb(fields["config"]),
            "context": Jsonb(fields["context"]),
            "metadata": Jsonb(fields["metadata"]),
            "version": version,
        },
    )
