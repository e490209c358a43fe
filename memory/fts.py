"""Postgres full-text search over a docs corpus, and reciprocal-rank fusion with the dense ranking."""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import tuple_row

FTS_INDEX = "store_text_fts_idx"
FTS_CONFIG = "english"
# The exact expression the GIN index is built on; queries must repeat it verbatim for the index to apply.
_TSV = "to_tsvector('english'::regconfig, value->>'text')"
RRF_K = 60

_FILTER_OPS = {
    "$eq": "value->%s = %s::jsonb",
    "$ne": "value->%s != %s::jsonb",
    "$gt": "value->>%s > %s",
    "$gte": "value->>%s >= %s",
    "$lt": "value->>%s < %s",
    "$lte": "value->>%s <= %s",
}

# Pools (or connections) whose index is known to exist: one CREATE INDEX IF NOT EXISTS per pool and process.
_ensured: weakref.WeakSet[Any] = weakref.WeakSet()


async def _execute(conn_or_pool: Any, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on an AsyncConnection or (borrowing a connection from) an AsyncConnectionPool."""
    if not isinstance(conn_or_pool, AsyncConnection):  # a psycopg_pool.AsyncConnectionPool
        async with conn_or_pool.connection() as conn:
            return await _execute(conn, sql, params)
    async with conn_or_pool.cursor(row_factory=tuple_row) as cur:  # the store's pool hands out dict rows
        await cur.execute(sql, params)
        return await cur.fetchall() if cur.description else []


async def ensure_fts_index(conn_or_pool: Any, *, pool: Any = None) -> None:
    """Create the expression GIN index full-text search uses, if it is missing (idempotent). `pool`: the pool
    `conn_or_pool` came from, so later searches on that pool skip the check."""
    await _execute(conn_or_pool, f"CREATE INDEX IF NOT EXISTS {FTS_INDEX} ON store USING gin ({_TSV})")
    try:
        _ensured.add(pool if pool is not None else conn_or_pool)
    except TypeError:  # not weak-referenceable: just ensure again next time
        pass


def _filter_sql(filter: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """The store's filter semantics (plain value = equality, or {"$op": value}) as SQL on `value`."""
    parts: list[str] = []
    params: list[Any] = []
    for key, want in (filter or {}).items():
        ops = (
            want
            if isinstance(want, dict) and want and all(str(o).startswith("$") for o in want)
            else {"$eq": want}
        )
        for op, val in ops.items():
            if op not in _FILTER_OPS:
                raise ValueError(f"unsupported filter operator: {op}")
            parts.append(_FILTER_OPS[op])
            params += [key, json.dumps(val) if op in ("$eq", "$ne") else str(val)]
    return "".join(f" AND {p}" for p in parts), params


async def fts_search(
    pool: Any, prefix: str, query: str, *, limit: int, filter: dict[str, Any] | None = None
) -> list[tuple[str, dict[str, Any], float]]:
    """(key, value, rank) of the rows of one store prefix matching any query word, best first.

    The query's words are stemmed and OR-ed (a question rarely shares every word with its answer);
    rows are ranked by ts_rank_cd, normalised by document length.
    """
    if pool not in _ensured:
        await ensure_fts_index(pool)
    where, params = _filter_sql(filter)
    sql = f"""
        WITH q AS (
            SELECT string_agg(quote_literal(lex), ' | ')::tsquery AS q
            FROM unnest(tsvector_to_array(to_tsvector('{FTS_CONFIG}', %s::text))) AS lex
        )
        SELECT key, value, ts_rank_cd({_TSV}, q.q, 1) AS rank
        FROM store, q
        WHERE prefix = %s AND q.q IS NOT NULL AND {_TSV} @@ q.q
          AND (expires_at IS NULL OR expires_at > NOW()){where}
        ORDER BY rank DESC, key
        LIMIT %s
    """
    rows = await _execute(pool, sql, [query, prefix, *params, limit])
    return [(key, value, float(rank)) for key, value, rank in rows]


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: score(d) = sum over rankings of 1 / (k + rank), rank starting at 1."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
