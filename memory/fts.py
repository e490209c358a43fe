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
# Okapi BM25 parameters (the usual defaults): term-frequency saturation and length normalisation.
BM25_K1 = 1.2
BM25_B = 0.75

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
    """(key, value, score) of the rows of one store prefix matching any query word, best first.

    The query's words are stemmed and OR-ed (a question rarely shares every word with its answer); rows are
    ranked by Okapi BM25 (k1 = BM25_K1, b = BM25_B): a word's weight grows with how rare it is in the prefix
    (its document frequency, counted through the GIN index at query time, so it is never stale), a row's
    score with how often it holds the word, damped by the row's length against the prefix's average. So
    "liveness" outweighs "endpoint" in a corpus where every chunk says "endpoint".
    """
    if pool not in _ensured:
        await ensure_fts_index(pool)
    where, params = _filter_sql(filter)
    sql = f"""
        WITH words AS (
            SELECT DISTINCT lex FROM unnest(tsvector_to_array(to_tsvector('{FTS_CONFIG}', %s::text))) AS lex
        ),
        q AS (SELECT string_agg(quote_literal(lex), ' | ')::tsquery AS q FROM words),
        stats AS MATERIALIZED (
            SELECT count(*) AS n, GREATEST(avg(length(value->>'text')), 1) AS avgdl
            FROM store WHERE prefix = %s
        ),
        df AS MATERIALIZED (
            SELECT lex, (
                SELECT count(*) FROM store
                WHERE prefix = %s AND {_TSV} @@ quote_literal(lex)::tsquery
            ) AS n
            FROM words
        ),
        hits AS (
            SELECT key, value, {_TSV} AS tsv FROM store, q
            WHERE prefix = %s AND q.q IS NOT NULL AND {_TSV} @@ q.q
              AND (expires_at IS NULL OR expires_at > NOW()){where}
        ),
        scored AS (
            SELECT h.key, sum(
                ln(1 + (stats.n - df.n + 0.5) / (df.n + 0.5))
                * cardinality(t.positions) * ({BM25_K1} + 1)
                / (cardinality(t.positions)
                   + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * length(h.value->>'text') / stats.avgdl))
            ) AS score
            FROM hits h CROSS JOIN stats
            CROSS JOIN LATERAL unnest(h.tsv) AS t(lexeme, positions, weights)
            JOIN df ON df.lex = t.lexeme
            GROUP BY h.key
        )
        SELECT h.key, h.value, s.score
        FROM scored s JOIN hits h USING (key)
        ORDER BY s.score DESC, h.key
        LIMIT %s
    """
    rows = await _execute(pool, sql, [query, prefix, prefix, prefix, *params, limit])
    return [(key, value, float(score)) for key, value, score in rows]


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: score(d) = sum over rankings of 1 / (k + rank), rank starting at 1."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
