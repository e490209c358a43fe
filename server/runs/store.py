"""The run store: every SQL statement on `keel_threads`, `keel_runs` and `keel_run_events`, in one place.

Statements are named constants (as langgraph's checkpoint-postgres keeps its own); the functions below run
them on a connection the caller owns, so the caller decides the transaction. The queue (claim, lease, reap),
the event log, the run manager, the executor, retention, the routes and the CLI all go through here; no other
module writes SQL for these three tables.

Statuses are `StrEnum`s: a member *is* its string, so it goes into SQL parameters, JSON and comparisons with
the exact value the API has always used.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, cast

import orjson
import psycopg
from psycopg.types.json import Jsonb


class RunStatus(enum.StrEnum):
    """A run's status (the API's values)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    # Part of the LangGraph Server vocabulary (a run filter, a terminal status a client may expect); Keel
    # itself never sets it: run time is bounded by the step budget and the lease, not by a timeout status.
    TIMEOUT = "timeout"


class ThreadStatus(enum.StrEnum):
    """A thread's status (the API's values)."""

    IDLE = "idle"
    BUSY = "busy"
    INTERRUPTED = "interrupted"
    ERROR = "error"


class Outcome(enum.StrEnum):
    """What the executor did with a claimed run (logs and tests; never stored or sent)."""

    SUCCESS = "success"
    INTERRUPTED = "interrupted"
    ERROR = "error"
    ROLLED_BACK = "rolled-back"  # cancelled with rollback: the run and its checkpoints are gone
    DRAINED = "drained"  # handed back at a step boundary (worker shutting down)
    RELEASED = "released"  # handed back after a transient database failure
    LOST_DB = (
        "lost-db"  # the database went away before the run began; the lease expires, the reaper re-queues
    )
    FENCED = "fenced"  # the lease was lost: stopped without writing anything more
    CANCELLED = (
        "cancelled"  # the worker itself was torn down mid-run; the lease expires, the reaper re-queues
    )
    CRASHED = "crashed"  # the executor raised; the lease expires, the reaper re-queues


ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING)
TERMINAL = (RunStatus.SUCCESS, RunStatus.ERROR, RunStatus.INTERRUPTED, RunStatus.TIMEOUT)

RUNS_CHANNEL = "keel_runs"  # payload "" = new work; "cancel:<run_id>:<action>" = cancellation requested
# payload: "<run id>" (new events: read the log), "<run id> <JSON [[seq, event, data], ...]>" (new events, the
# appended rows themselves, when they fit in NOTIFY_MAX bytes), "done:<run id>" (run ended or deleted: read its
# status) or "done:<run id> <JSON {status, result, error}>" (run ended, as finish() recorded it, when that fits)
EVENTS_CHANNEL = "keel_run_events"
# Postgres refuses a NOTIFY payload of 8000 bytes or more (default build); larger batches send the run id only.
NOTIFY_MAX = 7999

RUN_COLUMNS = (
    "run_id, thread_id, assistant_id, status, metadata, kwargs, multitask_strategy, created_at, "
    "updated_at, error, user_id, temporary, attempt, lease_owner, lease_epoch, cancel_requested, "
    "result, checkpoint_before, compensating"
)
THREAD_COLUMNS = (
    'thread_id, user_id, metadata, status, config, "values", interrupts, error, created_at, '
    "updated_at, state_updated_at"
)


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}." + c.strip() for c in RUN_COLUMNS.split(","))


NOTIFY = "SELECT pg_notify(%s, %s)"
NOTIFY_WORK = "SELECT pg_notify(%s, '')"
# Makes a run's creation durable when it committed without waiting for the WAL flush (RunManager.create,
# durable=False) and nothing has flushed it since: a write to its row, committed synchronously, flushes the WAL up
# to it (in order, so the creation too). A run no longer pending was claimed (or ended) by a synchronous commit
# that did the same: nothing is written, and nothing waits for the disk. The row is locked only for this
# statement, which a claim's SKIP LOCKED passes by: the workers are woken again. `known`: the run exists (none: a
# Postgres crash lost its creation, or it ended and its temporary thread went with it). (`woken` is selected so
# that the NOTIFY runs: a CTE that is only a SELECT runs when something reads it.)
CONFIRM_PENDING = """
WITH confirmed AS (
    UPDATE keel_runs SET status = status WHERE run_id = %(run)s AND status = 'pending' RETURNING 1
), woken AS (
    SELECT pg_notify(%(channel)s, '') FROM confirmed
)
SELECT (SELECT count(*) FROM woken) AS woken, EXISTS (SELECT 1 FROM keel_runs WHERE run_id = %(run)s) AS known
"""

# ------------------------------------------------------------------------------------------------ threads

SELECT_THREAD = f"SELECT {THREAD_COLUMNS} FROM keel_threads WHERE thread_id = %s"
INSERT_THREAD_WITH_TTL = (
    f"INSERT INTO keel_threads (thread_id, user_id, metadata, expires_at) VALUES (%s, %s, %s, "
    f"CASE WHEN %s::float IS NULL THEN NULL ELSE now() + %s::float * interval '1 minute' END) "
    f"ON CONFLICT (thread_id) DO NOTHING RETURNING {THREAD_COLUMNS}"
)
INSERT_TEMPORARY_THREAD = (
    "INSERT INTO keel_threads (thread_id, user_id, metadata, status) VALUES (%s, %s, %s, 'busy')"
)
INSERT_THREAD = "INSERT INTO keel_threads (thread_id, user_id, metadata) VALUES (%s, %s, %s)"
LOCK_THREAD_OWNER = "SELECT user_id, metadata, config FROM keel_threads WHERE thread_id = %s FOR UPDATE"
LOCK_THREAD = "SELECT 1 FROM keel_threads WHERE thread_id = %s FOR UPDATE"
LOCK_THREAD_NO_KEY = "SELECT 1 FROM keel_threads WHERE thread_id = %s FOR NO KEY UPDATE"
MARK_THREAD_BUSY = (
    "UPDATE keel_threads SET status = 'busy', metadata = %s, config = %s, updated_at = now() "
    "WHERE thread_id = %s"
)
MARK_THREAD_IDLE = (
    "UPDATE keel_threads SET status = 'idle', updated_at = now() WHERE thread_id = %s AND status = 'busy'"
)
PATCH_THREAD = (  # merge metadata; a TTL in minutes (when not NULL) restarts the thread's expiry from now
    "UPDATE keel_threads SET metadata = metadata || %s, expires_at = CASE WHEN %s::float IS NULL THEN expires_at "
    "ELSE now() + %s::float * interval '1 minute' END, updated_at = now() WHERE thread_id = %s "
    f"RETURNING {THREAD_COLUMNS}"
)
SET_THREAD_STATE = (
    'UPDATE keel_threads SET "values" = %s, status = %s, state_updated_at = now(), updated_at = now() '
    "WHERE thread_id = %s"
)
# Thread status after a run: busy while other runs are queued, else the run's outcome.
SET_THREAD_AFTER_RUN = (
    "UPDATE keel_threads SET status = CASE WHEN EXISTS (SELECT 1 FROM keel_runs WHERE thread_id = %s "
    'AND status = ANY(%s)) THEN \'busy\' ELSE %s END, "values" = coalesce(%s, "values"), '
    "interrupts = %s, error = %s, updated_at = now(), state_updated_at = now() WHERE thread_id = %s"
)
DELETE_THREAD = "DELETE FROM keel_threads WHERE thread_id = %s"
# POST /threads/{id}/copy: the thread's row under a new id (owner, metadata, values, expiry; a busy thread's
# copy is idle, it has no runs; its config starts empty, as the reference's), then its checkpoints, blobs and
# pending writes (see copy_thread).
COPY_THREAD = (
    'INSERT INTO keel_threads (thread_id, user_id, metadata, status, config, "values", interrupts, error, '
    "expires_at) SELECT %s, user_id, metadata, CASE WHEN status = 'busy' THEN 'idle' ELSE status END, '{}', "
    f'"values", interrupts, error, expires_at FROM keel_threads WHERE thread_id = %s RETURNING {THREAD_COLUMNS}'
)
COPY_CHECKPOINTS = (
    "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, "
    "metadata) SELECT %(new)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, "
    "CASE WHEN metadata ? 'thread_id' THEN jsonb_set(metadata - 'keel_epoch', '{thread_id}', "
    "to_jsonb(%(new)s::text)) ELSE metadata - 'keel_epoch' END FROM checkpoints WHERE thread_id = %(old)s"
)  # without keel_epoch: the copies belong to no run's lease (the fencing trigger would refuse them)
COPY_CHECKPOINT_BLOBS = (
    "INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob) "
    "SELECT %(new)s, checkpoint_ns, channel, version, type, blob FROM checkpoint_blobs WHERE thread_id = %(old)s"
)
COPY_CHECKPOINT_WRITES = (
    "INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, "
    "type, blob) SELECT %(new)s, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob "
    "FROM checkpoint_writes WHERE thread_id = %(old)s"
)
DELETE_THREAD_RUN_EVENTS = (
    "DELETE FROM keel_run_events WHERE run_id IN (SELECT run_id FROM keel_runs WHERE thread_id = %s)"
)
DELETE_THREAD_RUNS = "DELETE FROM keel_runs WHERE thread_id = %s"
# Threads past their TTL (or idle that long), never busy ones nor ones with a queued or running run.
EXPIRED_THREADS = (
    "SELECT thread_id::text AS id FROM keel_threads t WHERE status <> 'busy' AND (expires_at < now() "
    "OR (%s::float IS NOT NULL AND updated_at < now() - %s::float * interval '1 day')) "
    "AND NOT EXISTS (SELECT 1 FROM keel_runs r WHERE r.thread_id = t.thread_id AND r.status IN "
    "('pending', 'running')) ORDER BY updated_at LIMIT %s"
)

# ------------------------------------------------------------------------------------------------ runs

SELECT_RUN = f"SELECT {RUN_COLUMNS} FROM keel_runs WHERE run_id = %s"
SELECT_THREAD_RUN = f"SELECT {RUN_COLUMNS} FROM keel_runs WHERE run_id = %s AND thread_id = %s"
SELECT_RUN_STATUS = "SELECT status, result, error FROM keel_runs WHERE run_id = %s"
LOCK_RUN_STATUS = "SELECT status FROM keel_runs WHERE run_id = %s FOR UPDATE"
THREAD_ACTIVE_RUNS = (
    "SELECT run_id::text, status, kwargs FROM keel_runs WHERE thread_id = %s AND status = ANY(%s) "
    "ORDER BY created_at"
)
THREAD_ACTIVE_RUN_IDS = "SELECT run_id, thread_id FROM keel_runs WHERE thread_id = %s AND status = ANY(%s)"
THREAD_HAS_ACTIVE_RUN = "SELECT 1 FROM keel_runs WHERE thread_id = %s AND status = ANY(%s)"
# GET /threads/{id}/stream: the thread's runs created since a time (all with NULL), oldest first; no row at all
# when the thread is gone, one with a NULL run_id when it has no such run.
THREAD_RUNS_SINCE = (
    "SELECT r.run_id, r.status, r.created_at FROM keel_threads t LEFT JOIN keel_runs r "
    "ON r.thread_id = t.thread_id AND r.created_at >= coalesce(%s, '-infinity'::timestamptz) "
    "WHERE t.thread_id = %s ORDER BY r.created_at, r.run_id"
)
# POST /runs/cancel: the caller's runs of some statuses, or a thread's runs by id.
USER_RUNS_WITH_STATUS = (
    "SELECT run_id, thread_id, status FROM keel_runs WHERE user_id = %s AND status = ANY(%s) "
    "ORDER BY created_at"
)
THREAD_RUNS_BY_ID = (
    "SELECT run_id, thread_id, status FROM keel_runs WHERE thread_id = %s AND run_id = ANY(%s::uuid[])"
)
INSERT_RUN = (
    f"INSERT INTO keel_runs (run_id, thread_id, assistant_id, user_id, status, metadata, kwargs, "
    f"multitask_strategy, temporary) VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, %s) "
    f"RETURNING {RUN_COLUMNS}"
)
REQUEST_CANCEL = "UPDATE keel_runs SET cancel_requested = %s, updated_at = now() WHERE run_id = %s"
REQUEST_ROLLBACK = "UPDATE keel_runs SET cancel_requested = 'rollback', updated_at = now() WHERE run_id = %s"
CANCEL_PENDING = (
    "UPDATE keel_runs SET status = 'interrupted', cancel_requested = %s, finished_at = now(), "
    "updated_at = now() WHERE run_id = %s AND status = 'pending' RETURNING attempt"
)
DELETE_PENDING_RUN = "DELETE FROM keel_runs WHERE run_id = %s AND status = 'pending'"
DELETE_RUN = "DELETE FROM keel_runs WHERE run_id = %s"
LOCK_RUN_FOR_ROLLBACK = "SELECT lease_epoch, checkpoint_before FROM keel_runs WHERE run_id = %s FOR UPDATE"
# A run's checkpoint that committed without waiting for the WAL flush (its input checkpoint, see server.db.saver):
# still there? Read in the next checkpoint's synchronous transaction, which then makes it durable too.
CHECKPOINT_HELD = (
    "SELECT 1 FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' AND checkpoint_id = %s"
)
# The same when no checkpoint follows it (the run's last one): a synchronous commit of its own that writes the row
# (a no-op update; fenced by the keel_fence trigger), so that it returns only once the row is on disk.
CONFIRM_CHECKPOINT = (
    "UPDATE checkpoints SET metadata = metadata WHERE thread_id = %s AND checkpoint_ns = '' "
    "AND checkpoint_id = %s RETURNING 1"
)


def count_threads_sql(where: str) -> str:
    """How many threads match `where` (a clause of parameters only, built by the caller from a validated filter)."""
    return f"SELECT count(*) AS n FROM keel_threads WHERE {where}"


def search_threads_sql(where: str, order: str) -> str:
    """Threads matching `where` in `order` (a validated column and direction); params: the filter's, limit, offset."""
    return f"SELECT {THREAD_COLUMNS} FROM keel_threads WHERE {where} ORDER BY {order}, thread_id LIMIT %s OFFSET %s"


def list_runs_sql(with_status: bool) -> str:
    """A thread's runs, newest first (optionally of one status); params: thread, [status], limit, offset."""
    where = "thread_id = %s" + (" AND status = %s" if with_status else "")
    return f"SELECT {RUN_COLUMNS} FROM keel_runs WHERE {where} ORDER BY created_at DESC LIMIT %s OFFSET %s"


# The queue. Invariants kept by the database: a run is claimed by one worker at a time (SKIP LOCKED, then a
# lease); a thread has at most one running run (unique partial index) and its pending runs go in order; every
# claim bumps lease_epoch, and terminal updates and event appends require the current epoch.
#
# Owner liveness. Each worker holds a session advisory lock (LIVENESS_CLASS, its key) on its heartbeat
# connection for as long as it lives. A lease records that key (lease_lock) only if the lock was held when the
# lease was taken or renewed. When the worker's process dies, Postgres ends its sessions and drops the lock, so a
# run whose lease names a key nobody holds has a dead owner: it is reaped at once instead of when the lease runs
# out. Two guards keep a live owner's run from being taken: the lease must have been renewed since the postmaster
# started (a Postgres restart drops every lock, live owners' too, until they reconnect), and the key must be held
# by no session at all. The lease expiry stays the rule for everything else (a paused or partitioned worker keeps
# its sessions, and its lock, until Postgres notices). A live worker that loses only its heartbeat connection may
# see its run taken: the epoch fences it, as it fences a worker whose lease expired.
LIVENESS_CLASS = 1262830924  # 'KEEL' as a 32-bit integer: the first key of every worker's liveness lock


def _lock_held(key: str) -> str:
    """SQL: is the liveness lock `key` (an integer expression) held by some session of this database?"""
    return (
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
        f"AND l.classid = {LIVENESS_CLASS}::oid AND l.objid = ({key})::oid AND l.objsubid = 2 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    )


# The liveness locks held right now, read once per statement (a CTE named `live`; pg_locks copies the whole
# lock table at every read).
_LIVE = (
    "live AS MATERIALIZED (SELECT l.objid::bigint AS k FROM pg_locks l WHERE l.locktype = 'advisory' "
    f"AND l.granted AND l.classid = {LIVENESS_CLASS}::oid AND l.objsubid = 2 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)


def _lease_gone(r: str) -> str:
    """SQL: has the lease of running run `r` lapsed, or did its owner provably die? (needs the `live` CTE)"""
    return (
        f"({r}.lease_expires_at < now() OR ({r}.lease_lock IS NOT NULL "
        f"AND {r}.lease_renewed_at > pg_postmaster_start_time() AND {r}.lease_lock::bigint NOT IN "
        "(SELECT k FROM live)))"
    )


LOCK_LIVENESS = f"SELECT pg_try_advisory_lock({LIVENESS_CLASS}, %s) AS ok"
CLAIM = f"""
WITH next AS (
    SELECT r.run_id FROM keel_runs r
    WHERE r.status = 'pending'
      AND NOT EXISTS (SELECT 1 FROM keel_runs x WHERE x.thread_id = r.thread_id AND x.status = 'running')
      AND NOT EXISTS (SELECT 1 FROM keel_runs y WHERE y.thread_id = r.thread_id AND y.status = 'pending'
                      AND (y.created_at, y.run_id) < (r.created_at, r.run_id))
    ORDER BY r.created_at, r.run_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE keel_runs r SET status = 'running', attempt = r.attempt + 1, lease_owner = %(owner)s,
       lease_expires_at = now() + make_interval(secs => %(lease)s), lease_epoch = r.lease_epoch + 1,
       lease_lock = CASE WHEN {_lock_held("%(lock)s::int")} THEN %(lock)s::int END, lease_renewed_at = now(),
       started_at = coalesce(r.started_at, now()), updated_at = now(),
       -- Where the thread stood before this run wrote anything (a rollback deletes what comes after), set by
       -- the first claim: no attempt has written a checkpoint before it, and recording it here costs no
       -- commit of its own.
       checkpoint_before = coalesce(r.checkpoint_before, (SELECT max(c.checkpoint_id) FROM checkpoints c
           WHERE c.thread_id = r.thread_id::text AND c.checkpoint_ns = ''), '')
FROM next WHERE r.run_id = next.run_id
RETURNING {_prefixed("r")},
    -- Postgres's crash epoch (migration 13): if Postgres crashes during the attempt, it ends (PostgresRestarted).
    keel_crash_epoch() AS pg_epoch,
    -- Where this attempt's event log resumes (see runs.attempt.prepare), read in the same round trip: the run's
    -- last checkpoint (its id and how far the log had got), and the last event logged.
    (SELECT jsonb_build_object('id', c.checkpoint_id, 'seq', c.metadata->'keel_event_seq') FROM checkpoints c
     WHERE c.thread_id = r.thread_id::text AND c.checkpoint_ns = '' AND c.metadata->>'run_id' = r.run_id::text
     ORDER BY c.checkpoint_id DESC LIMIT 1) AS resume_from,
    (SELECT coalesce(max(e.seq), 0) FROM keel_run_events e WHERE e.run_id = r.run_id) AS logged_seq,
    -- Anything else queued (as of this statement)? If not, the worker need not try another claim: a run queued
    -- later sends its own NOTIFY.
    EXISTS (SELECT 1 FROM keel_runs p WHERE p.status = 'pending' AND p.run_id <> r.run_id) AS more_pending
"""
FINISH_RUN = (
    "UPDATE keel_runs SET status = %s, result = %s, error = %s, lease_owner = NULL, lease_expires_at = NULL, "
    "lease_lock = NULL, "
    "finished_at = now(), updated_at = now() "
    "WHERE run_id = %s AND lease_epoch = %s AND status = 'running' RETURNING temporary, kwargs"
)
# The newest checkpoint of a thread that checkpoint trimming would drop older ones than (None: nothing to trim).
TRIM_CUT = (
    "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' "
    "ORDER BY checkpoint_id DESC OFFSET %s LIMIT 1"
)
# Wake the run's waiters; wake workers only if this thread has queued runs (others need no claim).
NOTIFY_FINISHED = (
    "SELECT pg_notify(%s, %s), CASE WHEN EXISTS (SELECT 1 FROM keel_runs WHERE thread_id = %s AND "
    "status = 'pending') THEN pg_notify(%s, '') END"
)
RELEASE_RUN = (
    "UPDATE keel_runs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, lease_lock = NULL, "
    "attempt = CASE WHEN %s THEN attempt ELSE greatest(attempt - 1, 0) END, updated_at = now() "
    "WHERE run_id = %s AND lease_epoch = %s AND status = 'running' RETURNING run_id"
)
# clock_timestamp(), not now(): an UPDATE that waited on a row lock (held by a transaction of the same worker
# whose event loop is blocked) must extend the lease from when it runs, not when it began. It runs on the session
# that holds the worker's liveness lock, so it may name that lock (params: lease, lock key, run ids, owner).
HEARTBEAT = (
    "UPDATE keel_runs SET lease_expires_at = clock_timestamp() + make_interval(secs => %s), "
    "lease_lock = %s, lease_renewed_at = clock_timestamp() "
    "WHERE run_id = ANY(%s::uuid[]) AND lease_owner = %s AND status = 'running' "
    "RETURNING run_id::text, lease_epoch, cancel_requested"
)
MARK_COMPENSATING = (
    "UPDATE keel_runs SET compensating = true, error = %s, updated_at = now() "
    "WHERE run_id = %s AND lease_epoch = %s AND status = 'running' RETURNING run_id"
)
_EXHAUSTED = (
    "jsonb_build_object('error', 'RunAttemptsExhausted', 'message', format('the worker running this "
    "run died %%s times (lease expired each time); giving up', k.attempt))"
)
_COMP_FAILED = (
    "jsonb_build_object('error', 'CompensationFailed', 'message', format('undoing this run''s side "
    "effects failed %%s times; they need a human (see keel_tool_ledger)', k.attempt))"
)
_DEAD = "(e.give_up OR (e.exhausted AND NOT e.compensating AND NOT e.has_effects))"
REAP = (
    # Threads first, then runs: the order run creation and finish() lock them in (no deadlock). A thread
    # some request holds right now is skipped, with its runs, until the next reap.
    f"WITH {_LIVE}, threads AS (SELECT t.thread_id FROM keel_threads t WHERE t.thread_id IN (SELECT x.thread_id "
    f"FROM keel_runs x WHERE x.status = 'running' AND {_lease_gone('x')} "
    "AND x.run_id <> ALL(%(held)s::uuid[])) FOR UPDATE OF t SKIP LOCKED), "
    "expired AS (SELECT run_id, attempt >= %(max)s AS exhausted, "
    # A run stuck undoing its effects gets a few more attempts, then stops looping.
    "compensating AND attempt >= %(max)s + 3 AS give_up, compensating, "
    "EXISTS (SELECT 1 FROM keel_tool_ledger l WHERE l.run_id = r.run_id::text AND l.status = 'succeeded' "
    "AND coalesce(l.compensation, '') <> 'done') AS has_effects, "
    "attempt >= %(max)s AND NOT compensating AND finished_at IS NULL AND EXISTS (SELECT 1 FROM checkpoints c "
    "WHERE c.thread_id = r.thread_id::text AND c.checkpoint_ns = '' "
    "AND c.metadata->>'run_id' = r.run_id::text) AS finalize "
    f"FROM keel_runs r WHERE status = 'running' AND {_lease_gone('r')} "
    "AND run_id <> ALL(%(held)s::uuid[]) AND (r.thread_id IN (SELECT thread_id FROM threads) "
    "OR NOT EXISTS (SELECT 1 FROM keel_threads t2 WHERE t2.thread_id = r.thread_id)) "
    "FOR UPDATE OF r SKIP LOCKED) "
    "UPDATE keel_runs k SET "
    f"status = CASE WHEN e.finalize THEN 'running' WHEN {_DEAD} THEN 'error' ELSE 'pending' END, "
    f"error = CASE WHEN e.finalize THEN k.error WHEN e.give_up THEN {_COMP_FAILED} "
    f"WHEN e.exhausted AND NOT e.compensating THEN {_EXHAUSTED} ELSE k.error END, "
    "compensating = k.compensating OR (e.exhausted AND e.has_effects AND NOT e.finalize), "
    f"finished_at = CASE WHEN e.finalize OR {_DEAD} THEN now() END, "
    "lease_owner = CASE WHEN e.finalize THEN %(owner)s END, "
    "lease_expires_at = CASE WHEN e.finalize THEN now() + make_interval(secs => %(lease)s) END, "
    f"lease_lock = CASE WHEN e.finalize AND {_lock_held('%(lock)s::int')} THEN %(lock)s::int END, "
    "lease_renewed_at = CASE WHEN e.finalize THEN now() ELSE k.lease_renewed_at END, "
    "lease_epoch = k.lease_epoch + CASE WHEN e.finalize THEN 1 ELSE 0 END, updated_at = now() "
    "FROM expired e WHERE k.run_id = e.run_id "
    f"RETURNING {_prefixed('k')}, e.finalize, keel_crash_epoch() AS pg_epoch"
)

# ------------------------------------------------------------------------------------------------ events

# Fence and log position in one round trip. FOR KEY SHARE keeps the reaper (FOR UPDATE) off the run until the
# append commits, yet never blocks the worker's own lease heartbeat.
FENCED_LAST_SEQ = (
    "SELECT (SELECT coalesce(max(seq), 0) FROM keel_run_events WHERE run_id = %s) AS s "
    "FROM keel_runs WHERE run_id = %s AND lease_epoch = %s AND status = 'running' FOR KEY SHARE"
)
FENCE = "SELECT 1 FROM keel_runs WHERE run_id = %s AND lease_epoch = %s AND status = 'running' FOR KEY SHARE"
# The fence of a checkpoint's transaction, with Postgres's crash epoch (see fencing.PostgresRestarted).
FENCE_EPOCH = (
    "SELECT keel_crash_epoch() AS epoch FROM keel_runs "
    "WHERE run_id = %s AND lease_epoch = %s AND status = 'running' FOR KEY SHARE"
)
# Postgres's crash epoch, read in the transaction that records a run's outcome.
CRASH_EPOCH = "SELECT keel_crash_epoch() AS epoch"
LAST_SEQ = "SELECT coalesce(max(seq), 0) AS s FROM keel_run_events WHERE run_id = %s"
LAST_EVENT = "SELECT event FROM keel_run_events WHERE run_id = %s ORDER BY seq DESC LIMIT 1"
HAS_EVENTS = "SELECT 1 FROM keel_run_events WHERE run_id = %s LIMIT 1"
INSERT_EVENT = (
    "INSERT INTO keel_run_events (run_id, seq, attempt, event, data) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT DO NOTHING"
)
APPEND_EVENT = (
    "INSERT INTO keel_run_events (run_id, seq, attempt, event, data) "
    "SELECT %s, coalesce(max(seq), 0) + 1, %s, %s, %s FROM keel_run_events WHERE run_id = %s RETURNING seq"
)
EVENTS_PAGE = 1000  # events per read of the log
EVENTS_AFTER = (
    "SELECT seq, event, data FROM keel_run_events WHERE run_id = %s AND seq > %s ORDER BY seq "
    f"LIMIT {EVENTS_PAGE}"
)
DELETE_EVENTS_AFTER = "DELETE FROM keel_run_events WHERE run_id = %s AND seq > %s"
DELETE_RUN_EVENTS = "DELETE FROM keel_run_events WHERE run_id = %s"

# The oldest finished runs (terminal status) that ended before the cutoff and may still have events, read
# from the partial index keel_runs_events_ttl_idx (migration 6): finished_at set, events_pruned_at unset.
EXPIRED_RUNS = (
    "SELECT run_id, finished_at FROM keel_runs WHERE finished_at < now() - make_interval(secs => %(ttl)s) "
    "AND finished_at <= coalesce(%(upto)s::timestamptz, 'infinity') AND events_pruned_at IS NULL "
    "AND status IN (" + ", ".join(f"'{s}'" for s in TERMINAL) + ") ORDER BY finished_at LIMIT %(batch)s"
)
# At most `batch` event rows of those runs, oldest run first; deleted by ctid (a TID scan, whatever the
# planner makes of the join). SKIP LOCKED: concurrent sweeps take disjoint rows and never wait on a thread
# being deleted. `upto` is the finish time of the last run touched: the runs up to it are the ones to mark.
DELETE_EXPIRED_EVENTS = (
    "WITH doomed AS MATERIALIZED (SELECT r.finished_at, e.ctid "
    f"FROM ({EXPIRED_RUNS}) r CROSS JOIN LATERAL ("
    "SELECT ctid FROM keel_run_events x WHERE x.run_id = r.run_id ORDER BY seq LIMIT %(batch)s "
    "FOR UPDATE SKIP LOCKED) e LIMIT %(batch)s), "
    "gone AS (DELETE FROM keel_run_events WHERE ctid = ANY(ARRAY(SELECT ctid FROM doomed)) RETURNING 1) "
    "SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT max(finished_at) FROM doomed) AS upto"
)
# Runs of that window (up to `upto`; all of it when nothing was deleted) whose events are all gone leave the
# index, so later sweeps never look at them again. Only those rows are locked, SKIP LOCKED again.
MARK_EVENTS_PRUNED = (
    "UPDATE keel_runs k SET events_pruned_at = now() FROM (SELECT run_id FROM keel_runs d "
    f"WHERE run_id = ANY(ARRAY(SELECT run_id FROM ({EXPIRED_RUNS}) w)) "
    "AND NOT EXISTS (SELECT 1 FROM keel_run_events e WHERE e.run_id = d.run_id) FOR UPDATE SKIP LOCKED) r "
    "WHERE k.run_id = r.run_id"
)

# ------------------------------------------------------------------------------------------------ functions


def _json(value: Any) -> Jsonb | None:
    return Jsonb(value) if value is not None else None


async def fetchone(conn: psycopg.AsyncConnection[Any], sql: str, params: Any = None) -> dict[str, Any] | None:
    """One row (the pool's connections return dict rows), or None."""
    cur = await conn.execute(sql, params)
    return cast("dict[str, Any] | None", await cur.fetchone())


async def fetchall(conn: psycopg.AsyncConnection[Any], sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Every row (dict rows)."""
    cur = await conn.execute(sql, params)
    return cast("list[dict[str, Any]]", await cur.fetchall())


async def notify_work(conn: psycopg.AsyncConnection[Any]) -> None:
    """Wake the workers: there is something to claim."""
    await conn.execute(NOTIFY_WORK, (RUNS_CHANNEL,))


async def notify_cancel(conn: psycopg.AsyncConnection[Any], run_id: str, action: str) -> None:
    """Tell the worker running `run_id` to stop it (interrupt or rollback)."""
    await conn.execute(NOTIFY, (RUNS_CHANNEL, f"cancel:{run_id}:{action}"))


async def notify_done(conn: psycopg.AsyncConnection[Any], run_id: str) -> None:
    """Wake the run's readers and waiters: it ended (or was deleted)."""
    await conn.execute(NOTIFY, (EVENTS_CHANNEL, f"done:{run_id}"))


async def get_thread(conn: psycopg.AsyncConnection[Any], thread_id: str) -> dict[str, Any] | None:
    return await fetchone(conn, SELECT_THREAD, (thread_id,))


async def get_run(
    conn: psycopg.AsyncConnection[Any], run_id: str, thread_id: str | None = None
) -> dict[str, Any] | None:
    if thread_id is None:
        return await fetchone(conn, SELECT_RUN, (run_id,))
    return await fetchone(conn, SELECT_THREAD_RUN, (run_id, thread_id))


async def run_status(conn: psycopg.AsyncConnection[Any], run_id: str) -> dict[str, Any] | None:
    """(status, result, error) of a run, or None when it does not exist (any more)."""
    return await fetchone(conn, SELECT_RUN_STATUS, (run_id,))


async def set_thread_after_run(
    conn: psycopg.AsyncConnection[Any], thread_id: str, status: str, values: Any, interrupts: Any, error: Any
) -> None:
    """Thread status after a run: busy while other runs are queued, else the run's outcome."""
    await conn.execute(
        SET_THREAD_AFTER_RUN,
        (
            thread_id,
            list(ACTIVE),
            status,
            _json(values),
            Jsonb(interrupts or {}),
            Jsonb(error) if error else None,
            thread_id,
        ),
    )


async def set_thread_state(
    conn: psycopg.AsyncConnection[Any], thread_id: str, values: Any, status: str
) -> None:
    """The thread's cached values and status after its state changed outside a run (update_state)."""
    await conn.execute(SET_THREAD_STATE, (Jsonb(values), status, thread_id))


async def copy_thread(conn: psycopg.AsyncConnection[Any], source: str, target: str) -> dict[str, Any] | None:
    """A new thread `target` with `source`'s row and checkpoint history (not its runs), or None if no
    `source`. One REPEATABLE READ transaction: a run writing checkpoints meanwhile cannot tear the copy."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = await fetchone(conn, COPY_THREAD, (target, source))
        if row is None:
            return None
        ids = {"new": target, "old": source}
        for sql in (COPY_CHECKPOINTS, COPY_CHECKPOINT_BLOBS, COPY_CHECKPOINT_WRITES):
            await conn.execute(sql, ids)
    return row


async def delete_run(conn: psycopg.AsyncConnection[Any], run_id: str) -> None:
    """A run's events and row (caller's transaction)."""
    await conn.execute(DELETE_RUN_EVENTS, (run_id,))
    await conn.execute(DELETE_RUN, (run_id,))


async def append_unfenced(
    conn: psycopg.AsyncConnection[Any], run_id: str, attempt: int, event: str, data: Any
) -> int:
    """Append one event as the queue itself (reaper, cancel of a pending run): no lease involved."""
    row = await fetchone(conn, APPEND_EVENT, (run_id, attempt, event, Jsonb(data), run_id))
    assert row is not None
    await notify_done(conn, run_id)  # wakes readers too
    return int(row["seq"])


def _serialised(text: str) -> Callable[[Any], str]:
    return lambda _: text


async def append_events(
    conn: psycopg.AsyncConnection[Any],
    run_id: str,
    attempt: int,
    rows: list[tuple[int, str, Any]],
    *,
    notified: int = 0,
) -> None:
    """Insert events (in the caller's fenced transaction) and wake the run's readers.

    The notification carries the rows themselves when they fit (see EVENTS_CHANNEL), so a reader following the
    run live need not read them back; it is sent by the same transaction, so only once they are committed. Each
    event's data is serialised once, for the row and for the notification. `notified`: rows up to this seq are
    appended again (a checkpoint confirming them; a no-op unless a Postgres crash lost them) and were notified
    when first appended, so the notification leaves them out (and is not sent when nothing is new)."""
    texts = [orjson.dumps(data).decode() for _, _, data in rows]
    params = [
        (run_id, seq, attempt, ev, Jsonb(data, dumps=_serialised(text)))
        for (seq, ev, data), text in zip(rows, texts, strict=True)
    ]
    async with conn.cursor() as c:
        await c.executemany(INSERT_EVENT, params)
    fresh = [i for i, row in enumerate(rows) if row[0] > notified]
    if fresh:
        payload = notify_payload(run_id, [rows[i] for i in fresh], [texts[i] for i in fresh])
        await conn.execute(NOTIFY, (EVENTS_CHANNEL, payload))


def done_payload(run_id: str, status: str, result_text: str | None, error: Any) -> str:
    """`done:<run id> {"status", "result", "error"}` (the result already serialised), or without the row when
    too large."""
    error_text = orjson.dumps(error).decode() if error else "null"
    row = f'{{"status":{orjson.dumps(str(status)).decode()},"result":{result_text or "null"},"error":{error_text}}}'
    payload = f"done:{run_id} {row}"
    if len(payload) > NOTIFY_MAX or len(payload.encode()) > NOTIFY_MAX:
        return f"done:{run_id}"
    return payload


def parse_done(payload: str) -> tuple[str, dict[str, Any] | None]:
    """(run id, its terminal row or None) of a `done:` notification."""
    run_id, _, rest = payload[5:].partition(" ")
    if not rest:
        return run_id, None
    try:
        row = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return run_id, None
    if not isinstance(row, dict) or row.get("status") not in TERMINAL:
        return run_id, None
    return run_id, row


def notify_payload(run_id: str, rows: list[tuple[int, str, Any]], texts: list[str]) -> str:
    """`<run id> [[seq, event, data], ...]` (data as serialised in `texts`), or the run id alone when too large."""
    parts = [
        f"[{seq},{orjson.dumps(ev).decode()},{text}]" for (seq, ev, _), text in zip(rows, texts, strict=True)
    ]
    payload = f"{run_id} [{','.join(parts)}]"
    # (a quick bound in characters first: UTF-8 takes at least one byte per character)
    if len(payload) > NOTIFY_MAX or len(payload.encode()) > NOTIFY_MAX:
        return run_id
    return payload


def parse_notify(payload: str) -> tuple[str, list[tuple[int, str, Any]] | None]:
    """(run id, the appended rows, or None when the payload carries none) of an EVENTS_CHANNEL notification."""
    run_id, _, rest = payload.partition(" ")
    if not rest:
        return run_id, None
    try:
        rows = orjson.loads(rest)
        return run_id, [(int(seq), str(ev), data) for seq, ev, data in rows]
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return run_id, None  # (not ours: the readers read the log)


async def last_seq(conn: psycopg.AsyncConnection[Any], run_id: str) -> int:
    row = await fetchone(conn, LAST_SEQ, (run_id,))
    assert row is not None
    return int(row["s"])
