"""Known divergences of Keel from the reference server (`langgraph dev`), one entry per (step, kind).

Every entry says INTENDED (Keel deliberately differs; the reason is documented in docs/api.md) or PENDING
(issue 11 still has to close it). The conformance test fails on a divergence missing here AND on an entry
that no longer diverges: when you fix one, delete its entries in the same commit, so this list only shrinks.
Kinds: `status` (status code), `shape` (JSON keys/types/enum values), `events` (SSE event names).

Regenerate docs/conformance.md with `.venv/bin/python -m tests.conformance.report` after a change.
"""

from __future__ import annotations

STREAM_META = "INTENDED: stream event metadata also names the run's user (`user_id`), which Keel's traces and logs key on; the rest (created_by, run_attempt, the ids) is as the reference's (docs/api.md, Streaming)."
THREAD_EXTRA = "INTENDED: Keel's thread objects always carry `interrupts` (a field of the SDK's Thread type, which the in-memory reference leaves out until a run) and `error` (why a thread is in `error`); extra keys only (docs/api.md, Threads)."
RUN_KWARGS = "INTENDED: run objects' `kwargs` hold Keel's durable run request (request, attempt, error, on_completion, durability...), not the reference's internal merged config; the run's fields a client reads are the reference's (docs/api.md, Runs)."
ASSISTANT_BY_GRAPH_ID = "INTENDED: a graph id works wherever an assistant id does (GET /assistants/agent is its system assistant); the reference answers 422 unless it is a UUID (docs/api.md, Assistants)."
COPY_VALUES = "INTENDED: a thread copy carries the original's `values` and `interrupts` (docs/api.md, Threads); the in-memory reference's copy has none until its next run (its state has them)."
PRUNE_KEEP_LATEST = "INTENDED: prune `keep_latest` keeps each thread's latest checkpoint (docs/api.md, Threads); the in-memory `langgraph dev` answers 422 'not supported in in-memory runtime'."
THREAD_STREAM_UNKNOWN = "INTENDED: GET /threads/{id}/stream of an unknown (or another user's) thread is 404 (docs/api.md, Threads); the reference opens an empty stream."
CRONS = "INTENDED: cron search/count accept a graph name as `assistant_id`, as Keel does wherever an assistant id goes; the reference answers 422 unless it is a UUID (docs/api.md, Crons)."
MALFORMED = "INTENDED: a body that is not JSON is 400 'Malformed JSON body: ...' (the HTTP status for a syntax error; 422 stays 'a field is invalid'); the reference answers 422 (docs/api.md, Errors)."
ERROR_BODY = 'INTENDED: every Keel error is JSON `{"detail": str}` with 422 for an invalid field (docs/api.md, errors); the reference answers plain text or `{"error"}` with 400 here.'
UNKNOWN_CHECKPOINT = "INTENDED: a run from a checkpoint the thread does not have is 404 (docs/api.md, Runs: it would silently start from an empty state); the reference starts a fresh run. Reading the state at such a checkpoint answers the empty state as the reference does."
INFO = "INTENDED: GET /info names the server: host.kind 'keel' (not 'self-hosted') and no host_revision_id."

ALLOWED: dict[tuple[str, str], str] = {
    # STREAM_META
    ("stream.messages", "shape"): STREAM_META,
    ("stream.messages_tuple", "shape"): STREAM_META,
    ("stream.debug", "shape"): STREAM_META,
    ("stream.events", "shape"): STREAM_META,
    ("stream.tasks", "shape"): STREAM_META,
    ("stream.values_messages_tuple", "shape"): STREAM_META,
    ("stream.updates_events", "shape"): STREAM_META,
    ("stream.all_common", "shape"): STREAM_META,
    ("stateless.stream.messages", "shape"): STREAM_META,
    # THREAD_EXTRA
    ("threads.create", "shape"): THREAD_EXTRA,
    ("threads.create.metadata", "shape"): THREAD_EXTRA,
    ("threads.create.with_id", "shape"): THREAD_EXTRA,
    ("threads.create.if_exists_do_nothing", "shape"): THREAD_EXTRA,
    ("threads.get", "shape"): THREAD_EXTRA,
    ("threads.patch", "shape"): THREAD_EXTRA,
    ("threads.search", "shape"): THREAD_EXTRA,
    ("threads.search.metadata", "shape"): THREAD_EXTRA,
    ("threads.search.status", "shape"): THREAD_EXTRA,
    ("threads.search.sort", "shape"): THREAD_EXTRA,
    ("interrupt.thread", "shape"): THREAD_EXTRA,
    ("threads.create.for_prune", "shape"): THREAD_EXTRA,
    # RUN_KWARGS
    ("runs.create", "shape"): RUN_KWARGS,
    ("runs.get", "shape"): RUN_KWARGS,
    ("runs.list", "shape"): RUN_KWARGS,
    ("runs.list.limit_status", "shape"): RUN_KWARGS,
    ("runs.create.stream_join", "shape"): RUN_KWARGS,
    ("runs.create.bad_input_type", "shape"): RUN_KWARGS,
    ("interrupt.runs_list", "shape"): RUN_KWARGS,
    ("stateless.create", "shape"): RUN_KWARGS,
    ("stateless.create.webhookless_keep", "shape"): RUN_KWARGS,
    ("stateless.batch", "shape"): RUN_KWARGS,
    # ASSISTANT_BY_GRAPH_ID
    ("assistants.get.by_graph_id", "status"): ASSISTANT_BY_GRAPH_ID,
    # COPY_VALUES
    ("threads.copy", "shape"): COPY_VALUES,
    # PRUNE_KEEP_LATEST
    ("threads.prune.keep_latest", "status"): PRUNE_KEEP_LATEST,
    # THREAD_STREAM_UNKNOWN
    ("threads.stream.unknown", "status"): THREAD_STREAM_UNKNOWN,
    # CRONS
    ("crons.search.assistant", "status"): CRONS,
    # ERROR_BODY
    ("store.get.no_key", "status"): ERROR_BODY,
    ("store.put.bad_namespace", "shape"): ERROR_BODY,
    # MALFORMED
    ("threads.create.malformed_json", "status"): MALFORMED,
    ("runs.create.malformed_json", "status"): MALFORMED,
    # UNKNOWN_CHECKPOINT
    ("runs.create.unknown_checkpoint", "status"): UNKNOWN_CHECKPOINT,
    # INFO
    ("info", "shape"): INFO,
}
