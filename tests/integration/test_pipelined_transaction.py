"""server.db.pipelined_transaction on the real Postgres: the statements commit together, and every kind of failure
(raised in the block, a statement's error read or not, the COMMIT's) leaves nothing behind, propagates as
itself, and hands the connection back idle."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from server.db import pipelined_transaction


class Boom(Exception):
    pass


@pytest.fixture
async def conn(db):
    async with db.pool.connection() as c:
        await c.execute("DROP TABLE IF EXISTS ptx")
        await c.execute("CREATE TABLE ptx (k int PRIMARY KEY, v text)")
        await c.execute(
            "CREATE TABLE IF NOT EXISTS ptx_later (k int, CONSTRAINT ptx_later_k UNIQUE (k) DEFERRABLE "
            "INITIALLY DEFERRED)"
        )
        await c.execute("TRUNCATE ptx_later")
        yield c
        assert c.info.transaction_status == TransactionStatus.IDLE


async def rows(conn) -> list[int]:
    cur = await conn.execute("SELECT k FROM ptx ORDER BY k")
    return [r["k"] for r in await cur.fetchall()]


async def test_the_statements_commit_together_and_read_results_arrive(conn):
    async with pipelined_transaction(conn):
        await conn.execute("INSERT INTO ptx VALUES (1, 'a')")
        cur = await conn.execute("SELECT count(*) AS n FROM ptx")
        assert (await cur.fetchone())["n"] == 1  # read inside: the transaction sees its own write
        inserted = await conn.execute("INSERT INTO ptx VALUES (2, 'b') RETURNING k")
    assert (await inserted.fetchone())["k"] == 2  # read after: the row of a committed statement
    assert await rows(conn) == [1, 2]


async def test_an_exception_in_the_block_rolls_back(conn):
    with pytest.raises(Boom):
        async with pipelined_transaction(conn):
            await conn.execute("INSERT INTO ptx VALUES (1, 'a')")
            await (await conn.execute("SELECT 1")).fetchone()  # the insert has run
            raise Boom
    assert await rows(conn) == []


async def test_a_failing_statement_that_is_never_read_raises_at_the_end(conn):
    await conn.execute("INSERT INTO ptx VALUES (1, 'a')")
    with pytest.raises(pg_errors.UniqueViolation):
        async with pipelined_transaction(conn):
            await conn.execute("INSERT INTO ptx VALUES (2, 'b')")
            await conn.execute("INSERT INTO ptx VALUES (1, 'again')")
            await conn.execute("INSERT INTO ptx VALUES (3, 'c')")
    assert await rows(conn) == [1]


async def test_a_failing_statement_raises_where_it_is_read(conn):
    await conn.execute("INSERT INTO ptx VALUES (1, 'a')")
    with pytest.raises(pg_errors.UniqueViolation):
        async with pipelined_transaction(conn):
            await conn.execute("INSERT INTO ptx VALUES (2, 'b')")
            cur = await conn.execute("INSERT INTO ptx VALUES (1, 'again') RETURNING k")
            await cur.fetchone()
            pytest.fail("not reached")
    assert await rows(conn) == [1]


async def test_a_failing_commit_raises_and_leaves_nothing(conn):
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with pipelined_transaction(conn):
            await conn.execute("INSERT INTO ptx VALUES (1, 'a')")
            await conn.execute("INSERT INTO ptx_later VALUES (7), (7)")  # checked at COMMIT
    assert await rows(conn) == []
