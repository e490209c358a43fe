"""One Postgres for everything: the embedded server, the shared pool, the saver, the store, migrations.

Keel never runs without persistence: if Postgres cannot be reached, start-up fails with the reason.

One module per job: `database` (start-up: `open_database` and the `Database` it returns), `migrations`
(Keel's own tables), `embedded` (the embedded Postgres under KEEL_HOME), `pool` (the hardened connection
pool), `errors` (`DatabaseUnavailable` and the transient-error classifier), `urls` (connection strings) and
`reindexing` (`keel reindex`). Import the names from `server.db`.
"""

from server.db.database import Database, check_embedding_model, ensure_pgvector, open_database
from server.db.embedded import (
    MAX_SOCKET_PATH,
    PIN_FILE,
    SOCKET_NAME,
    embedded_pgdata,
    embedded_server,
    embedded_status,
    release_embedded,
    stop_embedded,
)
from server.db.errors import DatabaseUnavailable, EmbeddingMismatch, is_transient_error, retry_transient
from server.db.migrations import MIGRATIONS, migrate
from server.db.pool import (
    CHECK_AFTER_IDLE_S,
    HNSW_EF_SEARCH,
    Connection,
    Pool,
    make_pool,
    pipelined_transaction,
)
from server.db.reindexing import reindex
from server.db.urls import describe, with_dbname

__all__ = [
    "CHECK_AFTER_IDLE_S",
    "HNSW_EF_SEARCH",
    "MAX_SOCKET_PATH",
    "MIGRATIONS",
    "PIN_FILE",
    "SOCKET_NAME",
    "Connection",
    "Database",
    "DatabaseUnavailable",
    "EmbeddingMismatch",
    "Pool",
    "check_embedding_model",
    "describe",
    "embedded_pgdata",
    "embedded_server",
    "embedded_status",
    "ensure_pgvector",
    "is_transient_error",
    "make_pool",
    "pipelined_transaction",
    "migrate",
    "open_database",
    "reindex",
    "release_embedded",
    "retry_transient",
    "stop_embedded",
    "with_dbname",
]
