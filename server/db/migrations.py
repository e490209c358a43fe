"""Keel's own tables: the ordered, append-only migrations and the function that applies the pending ones."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import tuple_row

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
    # 9: crons (server/crons): schedules that create runs. A thread's crons go with the thread; stateless crons
    # (thread_id NULL) make a new thread per run. `owner` keeps the creator's roles and tenant for the runs.
    """
    CREATE TABLE IF NOT EXISTS keel_crons (
        cron_id uuid PRIMARY KEY,
        assistant_id uuid NOT NULL,
        thread_id uuid REFERENCES keel_threads (thread_id) ON DELETE CASCADE,
        user_id text NOT NULL,
        owner jsonb NOT NULL DEFAULT '{}'::jsonb,
        schedule text NOT NULL,
        timezone text,
        end_time timestamptz,
        on_run_completed text,
        enabled boolean NOT NULL DEFAULT true,
        payload jsonb NOT NULL DEFAULT '{}'::jsonb,
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        next_run_at timestamptz NOT NULL,
        last_run_id uuid,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS keel_crons_due_idx ON keel_crons (next_run_at) WHERE enabled;
    CREATE INDEX IF NOT EXISTS keel_crons_user_idx ON keel_crons (user_id, created_at DESC);
    CREATE INDEX IF NOT EXISTS keel_crons_thread_idx ON keel_crons (thread_id) WHERE thread_id IS NOT NULL;
    """,
    # 10: GET /metrics counts runs by status and the retried runs at every scrape: index-only scans, not a pass
    # over every run's kwargs and result.
    """
    CREATE INDEX IF NOT EXISTS keel_runs_status_idx ON keel_runs (status);
    CREATE INDEX IF NOT EXISTS keel_runs_retried_idx ON keel_runs (attempt) WHERE attempt > 1;
    """,
    # 11: assistants (a graph with its config, context and metadata) and every version of each. owner is the
    # creating user, NULL for the system assistant of each graph (created at start-up, visible to all).
    """
    CREATE TABLE IF NOT EXISTS keel_assistants (
        assistant_id uuid PRIMARY KEY,
        graph_id text NOT NULL,
        owner text,
        name text NOT NULL,
        description text,
        config jsonb NOT NULL DEFAULT '{}'::jsonb,
        context jsonb NOT NULL DEFAULT '{}'::jsonb,
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS keel_assistants_owner_idx ON keel_assistants (owner, created_at DESC);
    CREATE INDEX IF NOT EXISTS keel_assistants_metadata_idx ON keel_assistants USING gin (metadata jsonb_path_ops);
    CREATE TABLE IF NOT EXISTS keel_assistant_versions (
        assistant_id uuid NOT NULL REFERENCES keel_assistants (assistant_id) ON DELETE CASCADE,
        version integer NOT NULL,
        graph_id text NOT NULL,
        name text NOT NULL,
        description text,
        config jsonb NOT NULL DEFAULT '{}'::jsonb,
        context jsonb NOT NULL DEFAULT '{}'::jsonb,
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (assistant_id, version)
    );
    """,
    # 12: owner liveness (server/runs/store.py, LIVENESS_CLASS): the advisory lock key of the worker holding a
    # run's lease, and when it last renewed it, so a dead owner's run is reaped without waiting out its lease.
    """
    ALTER TABLE keel_runs
        ADD COLUMN IF NOT EXISTS lease_lock integer,
        ADD COLUMN IF NOT EXISTS lease_renewed_at timestamptz;
    """,
    # 13: Postgres's crash epoch (server/runs/fencing.py, PostgresRestarted): a token in an unlogged table, which
    # crash recovery empties and a clean shutdown keeps; keel_crash_epoch() draws a new one when it is gone.
    """
    CREATE UNLOGGED TABLE IF NOT EXISTS keel_crash_epoch (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        token uuid NOT NULL
    );
    CREATE OR REPLACE FUNCTION keel_crash_epoch() RETURNS uuid LANGUAGE plpgsql VOLATILE AS $$
    DECLARE t uuid;
    BEGIN
        SELECT token INTO t FROM keel_crash_epoch;
        IF t IS NULL THEN
            INSERT INTO keel_crash_epoch (token) VALUES (gen_random_uuid()) ON CONFLICT (one) DO NOTHING;
            SELECT token INTO t FROM keel_crash_epoch;
        END IF;
        RETURN t;
    END $$;
    """,
]


async def migrate(conn: psycopg.AsyncConnection[Any]) -> int:
    """Apply pending migrations in order; return how many ran. Running it twice changes nothing."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS keel_migrations (v integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    async with conn.cursor(row_factory=tuple_row) as cur:  # whatever rows the connection returns
        await cur.execute("SELECT coalesce(max(v), 0) FROM keel_migrations")
        row = await cur.fetchone()
    current: int = row[0] if row is not None else 0
    ran = 0
    for v, sql in enumerate(MIGRATIONS, start=1):
        if v <= current:
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute("INSERT INTO keel_migrations (v) VALUES (%s)", (v,))
        ran += 1
    return ran
