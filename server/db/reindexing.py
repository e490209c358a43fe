"""`keel reindex`: re-embed every indexed store item with the configured embedding model."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from server.db.database import Database


async def reindex(db: Database, embeddings_name: str, dims: int) -> int:
    """Re-embed every indexed store item with the configured model (rebuilding the vector table for new dims)."""
    from langgraph.store.base import PutOp

    async with db.pool.connection() as conn:
        await conn.execute("DROP TABLE IF EXISTS store_vectors")
        await conn.execute("DELETE FROM vector_migrations")
    await db.store.setup()  # recreates store_vectors with the configured dimension and HNSW index
    count, after = 0, ("", "")
    while True:  # keyset pages: each one an index range scan, however far in
        async with db.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT prefix, key, value FROM store WHERE (prefix, key) > (%s, %s) ORDER BY prefix, key LIMIT 200",
                    after,
                )
            ).fetchall()
        if not rows:
            break
        ops = [
            PutOp(tuple(r["prefix"].split(".")), r["key"], r["value"])
            for r in rows
            if "text" in (r["value"] or {})
        ]
        if ops:
            await db.store.abatch(ops)
        count += len(ops)
        after = (rows[-1]["prefix"], rows[-1]["key"])
    async with db.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO keel_meta (key, value) VALUES ('embeddings', %s) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value",
            (Jsonb({"model": embeddings_name, "dims": dims}),),
        )
    return count
