"""Known divergences of Keel from the reference server (`langgraph dev`), one entry per (step, kind).

Every entry says INTENDED (Keel deliberately differs; the reason is documented in docs/api.md) or PENDING
(issue 11 still has to close it). The conformance test fails on a divergence missing here AND on an entry
that no longer diverges: when you fix one, delete its entries in the same commit, so this list only shrinks.
Kinds: `status` (status code), `shape` (JSON keys/types/enum values), `events` (SSE event names).

Regenerate docs/conformance.md with `.venv/bin/python -m tests.conformance.report` after a change.
"""

from __future__ import annotations

END_EVENT = "PENDING: Keel ends every stream with an `end` event; the reference sends none (issue 11: no trailing end)."
MESSAGES_COMPLETE = "PENDING: `messages` mode: the reference closes each message with `messages/complete`; Keel sends a last `messages/partial` then `end`."
OUTPUT_SCHEMA = "PENDING: values/updates/wait/join carry the graph's internal state fields (best_answer, critique, draft, passages...); the reference filters output to the graph's output schema."
STREAM_META = "PENDING: stream event metadata: the reference adds created_by/run_attempt (and checkpoint config ids), Keel adds user_id; shape only."
DEBUG_SHAPE = "PENDING: `debug`/`checkpoints`/`tasks` payloads: the reference's carry checkpoint/parent_checkpoint and run/assistant/graph ids in config; Keel's differ (issue 11: debug checkpoint events)."
EVENTS_MODE = "PENDING: stream_mode `events` (astream_events) is not supported by Keel yet: 422."
JOIN_FINISHED = "PENDING: join_stream of a finished run: the reference sends nothing (live events only without Last-Event-ID); Keel replays the run from the start."
JOIN_UNKNOWN = "PENDING: join/join_stream of an unknown run: the reference answers 200 with an error body/event; Keel 404."
THREAD_EXTRA = (
    "PENDING: Keel's thread objects carry extra `error` and `interrupts` keys; shape only (extra keys)."
)
THREAD_CONFIG = (
    "PENDING: thread `config` after a run: the reference has `{configurable: {}}`, Keel `{}`; shape only."
)
CHECKPOINT_META = "PENDING: state/history: the reference's checkpoint metadata has created_by/run_attempt/thread_id, Keel's checkpoint has an extra checkpoint_map; shape only."
RUN_KWARGS = "PENDING: run objects: `kwargs` internals differ (reference: config.configurable ids, checkpoint_during; Keel: attempt, error, on_completion...); the run status after an interrupt may differ too."
DESCRIPTION = "PENDING: the system assistant's description from langgraph.json is null in Keel."
ASSISTANT_CRUD = "PENDING: POST/PATCH/DELETE /assistants, versions and latest are not served by Keel yet (later steps lack the created assistant)."
ASSISTANT_SEARCH = "PENDING: assistant search/get semantics: unknown graph_id, graph id in place of an assistant id, metadata filters."
GRAPH_SHAPE = "PENDING: GET /assistants/{id}/graph: Keel's node `data.id` is a list; shape only."
COPY = "PENDING: POST /threads/{id}/copy is not served by Keel yet."
PRUNE = "PENDING: POST /threads/prune is not served by Keel yet."
THREAD_STREAM = "PENDING: GET /threads/{id}/stream (thread-level join) is not served by Keel yet."
BATCH = "PENDING: POST /runs/batch is not served by Keel yet."
BULK_CANCEL = "PENDING: POST /runs/cancel (bulk) is not served by Keel yet."
CRONS = "INTENDED: cron search/count accept a graph name as `assistant_id`, as Keel does wherever an assistant id goes; the reference answers 422 unless it is a UUID (docs/api.md, Crons)."
STORE_MISSING = (
    "PENDING: GET /store/items of a missing key: the reference answers 200 `null`, Keel 404 (the SDKs throw)."
)
STORE_SEARCH = "PENDING: store search: the reference's items carry `score: null`; a `query` search finds the items in the reference, none in Keel (no vector match on an empty-ish index)."
ERROR_BODY = 'INTENDED: every Keel error is JSON `{"detail": str}` with 422 for an invalid field (docs/api.md, errors); the reference answers plain text or `{"error"}` with 400 here.'
MALFORMED = "PENDING: a body that is not JSON: reference 422, Keel 400 (both 4xx; decide: match or document as intended)."
VALIDATION_CODE = "PENDING: same 4xx class, other code or message (reference 400/404/409, Keel 404/409/422); decide: match or document as intended."
CONTEXT_INTERRUPT = "PENDING: an unknown `context` key / `interrupt_before` node: the reference accepts it, Keel 422 (issue 11: let graph-defined context through, keep the identity/budget protection)."
UNKNOWN_CHECKPOINT = "PENDING: an unknown checkpoint id: the reference answers 200 (empty state / a fresh run), Keel 404 (issue 9 chose 404; issue 11 asks for the reference's statuses)."
STATE_NO_GRAPH = (
    "PENDING: a state update on a thread that never ran: the reference 400 (no graph assigned), Keel 200."
)
HISTORY_BEFORE = "PENDING: history `before` as a string: the reference 422, Keel accepts it."
STATE_EMPTY_META = (
    "PENDING: state of a thread that never ran: metadata null in the reference, {} in Keel; shape only."
)
INFO = "INTENDED: GET /info names the server: host.kind 'keel' (not 'self-hosted') and no host_revision_id."
OK = "PENDING: GET /ok: the reference adds `services: {}`; shape only."
CANCEL_FINISHED = (
    "PENDING: cancel of a finished run: reference 404 'no matching runs', Keel 409 'already success'."
)

ALLOWED: dict[tuple[str, str], str] = {
    # END_EVENT
    ("runs.join_stream.live", "events"): END_EVENT,
    ("stream.default", "events"): END_EVENT,
    ("stream.values", "events"): END_EVENT,
    ("stream.updates", "events"): END_EVENT,
    ("stream.messages_tuple", "events"): END_EVENT,
    ("stream.debug", "events"): END_EVENT,
    ("stream.custom", "events"): END_EVENT,
    ("stream.tasks", "events"): END_EVENT,
    ("stream.checkpoints", "events"): END_EVENT,
    ("stream.values_updates", "events"): END_EVENT,
    ("stream.values_messages_tuple", "events"): END_EVENT,
    ("stream.all_common", "events"): END_EVENT,
    ("stream.tool.updates", "events"): END_EVENT,
    ("stream.subgraphs", "events"): END_EVENT,
    ("interrupt.stream_before", "events"): END_EVENT,
    ("interrupt.resume_null_input", "events"): END_EVENT,
    ("interrupt.stream_after", "events"): END_EVENT,
    ("stateless.stream", "events"): END_EVENT,
    ("stateless.stream.messages", "events"): END_EVENT,
    # MESSAGES_COMPLETE
    ("stream.messages", "events"): MESSAGES_COMPLETE,
    # OUTPUT_SCHEMA
    ("runs.wait", "shape"): OUTPUT_SCHEMA,
    ("runs.wait.tool", "shape"): OUTPUT_SCHEMA,
    ("runs.join", "shape"): OUTPUT_SCHEMA,
    ("runs.join_stream.live", "shape"): OUTPUT_SCHEMA,
    ("runs.wait.multitask_reject_idle", "shape"): OUTPUT_SCHEMA,
    ("runs.wait.if_not_exists_create", "shape"): OUTPUT_SCHEMA,
    ("runs.wait.new_thread_if_not_exists", "shape"): OUTPUT_SCHEMA,
    ("stream.default", "shape"): OUTPUT_SCHEMA,
    ("stream.values", "shape"): OUTPUT_SCHEMA,
    ("stream.updates", "shape"): OUTPUT_SCHEMA,
    ("stream.values_updates", "shape"): OUTPUT_SCHEMA,
    ("stream.values_messages_tuple", "shape"): OUTPUT_SCHEMA,
    ("stream.all_common", "shape"): OUTPUT_SCHEMA,
    ("stream.tool.updates", "shape"): OUTPUT_SCHEMA,
    ("stream.subgraphs", "shape"): OUTPUT_SCHEMA,
    ("interrupt.wait_before", "shape"): OUTPUT_SCHEMA,
    ("interrupt.resume_command", "shape"): OUTPUT_SCHEMA,
    ("interrupt.stream_before", "shape"): OUTPUT_SCHEMA,
    ("interrupt.resume_null_input", "shape"): OUTPUT_SCHEMA,
    ("interrupt.stream_after", "shape"): OUTPUT_SCHEMA,
    ("interrupt.resume_goto", "shape"): OUTPUT_SCHEMA,
    ("interrupt.command_update", "shape"): OUTPUT_SCHEMA,
    ("stateless.wait", "shape"): OUTPUT_SCHEMA,
    ("stateless.stream", "shape"): OUTPUT_SCHEMA,
    # STREAM_META
    ("stream.messages", "shape"): STREAM_META,
    ("stream.messages_tuple", "shape"): STREAM_META,
    ("stateless.stream.messages", "shape"): STREAM_META,
    # DEBUG_SHAPE
    ("stream.debug", "shape"): DEBUG_SHAPE,
    ("stream.tasks", "shape"): DEBUG_SHAPE,
    ("stream.checkpoints", "shape"): DEBUG_SHAPE,
    # EVENTS_MODE
    ("stream.events", "status"): EVENTS_MODE,
    ("stream.updates_events", "status"): EVENTS_MODE,
    # JOIN_FINISHED
    ("runs.join_stream.finished", "events"): JOIN_FINISHED,
    # JOIN_UNKNOWN
    ("runs.join.unknown", "status"): JOIN_UNKNOWN,
    ("runs.join_stream.unknown", "status"): JOIN_UNKNOWN,
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
    # THREAD_CONFIG
    ("threads.get.after_runs", "shape"): THREAD_CONFIG,
    ("interrupt.thread_status", "shape"): THREAD_CONFIG,
    # CHECKPOINT_META
    ("threads.state", "shape"): CHECKPOINT_META,
    ("threads.state.subgraphs", "shape"): CHECKPOINT_META,
    ("threads.state.at_checkpoint", "shape"): CHECKPOINT_META,
    ("threads.state.checkpoint_post", "shape"): CHECKPOINT_META,
    ("threads.history", "shape"): CHECKPOINT_META,
    ("threads.history.get", "shape"): CHECKPOINT_META,
    ("threads.history.before", "shape"): CHECKPOINT_META,
    ("threads.history.metadata", "shape"): CHECKPOINT_META,
    ("interrupt.state", "shape"): CHECKPOINT_META,
    ("interrupt.after_resume_state", "shape"): CHECKPOINT_META,
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
    # DESCRIPTION
    ("assistants.search", "shape"): DESCRIPTION,
    ("assistants.search.graph_id", "shape"): DESCRIPTION,
    ("assistants.search.metadata", "shape"): DESCRIPTION,
    ("assistants.get", "shape"): DESCRIPTION,
    ("assistants.schemas", "shape"): DESCRIPTION,
    # ASSISTANT_CRUD
    ("assistants.create", "status"): ASSISTANT_CRUD,
    ("assistants.create.with_id", "status"): ASSISTANT_CRUD,
    ("assistants.create.if_exists_do_nothing", "status"): ASSISTANT_CRUD,
    ("assistants.create.conflict", "status"): ASSISTANT_CRUD,
    ("assistants.get.created", "status"): ASSISTANT_CRUD,
    ("assistants.patch", "status"): ASSISTANT_CRUD,
    ("assistants.versions", "status"): ASSISTANT_CRUD,
    ("assistants.latest", "status"): ASSISTANT_CRUD,
    ("assistants.run_with_created", "status"): ASSISTANT_CRUD,
    ("assistants.delete", "status"): ASSISTANT_CRUD,
    ("assistants.delete.unknown", "status"): ASSISTANT_CRUD,
    # ASSISTANT_SEARCH
    ("assistants.search.by_metadata", "shape"): ASSISTANT_SEARCH,
    ("assistants.search.unknown_graph", "status"): ASSISTANT_SEARCH,
    ("assistants.get.by_graph_id", "status"): ASSISTANT_SEARCH,
    # GRAPH_SHAPE
    ("assistants.graph", "shape"): GRAPH_SHAPE,
    ("assistants.graph.xray", "shape"): GRAPH_SHAPE,
    # COPY
    ("threads.copy", "status"): COPY,
    ("threads.copy.state", "status"): COPY,
    ("threads.copy.unknown", "status"): COPY,
    # PRUNE
    ("threads.prune", "status"): PRUNE,
    ("threads.prune.keep_latest", "status"): PRUNE,
    ("threads.prune.bad_strategy", "status"): PRUNE,
    ("threads.get.after_prune", "status"): PRUNE,
    # THREAD_STREAM
    ("threads.stream", "status"): THREAD_STREAM,
    ("threads.stream.unknown", "status"): THREAD_STREAM,
    # BATCH
    ("stateless.batch", "status"): BATCH,
    ("stateless.batch.empty", "status"): BATCH,
    # BULK_CANCEL
    ("runs.cancel_bulk.status", "status"): BULK_CANCEL,
    ("runs.cancel_bulk.bad_status", "status"): BULK_CANCEL,
    # CRONS
    ("crons.search.assistant", "status"): CRONS,
    # STORE_MISSING
    ("store.get.missing", "status"): STORE_MISSING,
    ("store.get.after_delete", "status"): STORE_MISSING,
    # STORE_SEARCH
    ("store.search", "shape"): STORE_SEARCH,
    ("store.search.filter", "shape"): STORE_SEARCH,
    ("store.search.query", "shape"): STORE_SEARCH,
    # ERROR_BODY
    ("store.get.no_key", "status"): ERROR_BODY,
    ("store.put.bad_namespace", "shape"): ERROR_BODY,
    # MALFORMED
    ("threads.create.malformed_json", "status"): MALFORMED,
    ("runs.create.malformed_json", "status"): MALFORMED,
    # VALIDATION_CODE
    ("threads.state.update_unknown_node", "status"): VALIDATION_CODE,
    # CONTEXT_INTERRUPT
    ("runs.create.unknown_context_key", "status"): CONTEXT_INTERRUPT,
    ("runs.create.unknown_interrupt_node", "status"): CONTEXT_INTERRUPT,
    # UNKNOWN_CHECKPOINT
    ("threads.state.at_unknown_checkpoint", "status"): UNKNOWN_CHECKPOINT,
    ("runs.create.unknown_checkpoint", "status"): UNKNOWN_CHECKPOINT,
    # STATE_NO_GRAPH
    ("threads.state.update_before_any_run", "status"): STATE_NO_GRAPH,
    # HISTORY_BEFORE
    ("threads.history.before_string", "status"): HISTORY_BEFORE,
    # STATE_EMPTY_META
    ("threads.state.empty", "shape"): STATE_EMPTY_META,
    # INFO
    ("info", "shape"): INFO,
    # OK
    ("ok", "shape"): OK,
    # CANCEL_FINISHED
    ("runs.cancel.finished", "status"): CANCEL_FINISHED,
}
