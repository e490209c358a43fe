"""KEEL_HNSW_EF_SEARCH reaches every pooled connection (the HNSW candidate list of vector searches)."""

from __future__ import annotations

import pydantic
import pytest

from memory.embeddings import EMBED_DIMS
from server.db import HNSW_EF_SEARCH, open_database
from server.service import open_db
from server.settings import Settings


async def _ef_search_of_pool(db, n: int) -> list[str]:
    """SHOW hnsw.ef_search on n distinct pool connections held at once."""
    conns = [await db.pool.getconn() for _ in range(n)]
    try:
        out = []
        for conn in conns:
            row = await (await conn.execute("SHOW hnsw.ef_search")).fetchone()
            out.append(row["hnsw.ef_search"])
        return out
    finally:
        for conn in conns:
            await db.pool.putconn(conn)


def test_setting_default_matches_db_default(monkeypatch):
    monkeypatch.delenv("KEEL_HNSW_EF_SEARCH", raising=False)
    assert Settings().keel_hnsw_ef_search == HNSW_EF_SEARCH
    assert HNSW_EF_SEARCH > 40  # above pgvector's default: see docs/benchmarks.md


@pytest.mark.parametrize("bad", ["0", "1001", "many"])
def test_setting_is_validated(monkeypatch, bad):
    monkeypatch.setenv("KEEL_HNSW_EF_SEARCH", bad)
    with pytest.raises(pydantic.ValidationError):
        Settings()


async def test_default_reaches_pool_connections(db):
    assert await _ef_search_of_pool(db, 2) == [str(HNSW_EF_SEARCH)] * 2


async def test_open_database_argument_reaches_pool_connections(fresh_database_url, embeddings):
    db = await open_database(
        fresh_database_url, embeddings=embeddings, dims=EMBED_DIMS, pool_min=2, pool_max=3, hnsw_ef_search=250
    )
    try:
        assert await _ef_search_of_pool(db, 3) == ["250"] * 3
        # The iterative scan setting of the same callback is still applied.
        async with db.pool.connection() as conn:
            row = await (await conn.execute("SHOW hnsw.iterative_scan")).fetchone()
        assert row["hnsw.iterative_scan"] == "relaxed_order"
    finally:
        await db.close()


async def test_environment_variable_reaches_the_service_database(fresh_database_url, monkeypatch):
    monkeypatch.setenv("KEEL_HNSW_EF_SEARCH", "321")
    db = await open_db(Settings(database_url=fresh_database_url))
    try:
        assert await _ef_search_of_pool(db, 2) == ["321", "321"]
    finally:
        await db.close()
