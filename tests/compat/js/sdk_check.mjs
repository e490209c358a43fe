// The official LangGraph JS SDK (@langchain/langgraph-sdk, pinned in package.json) against a live Keel.
//
//     node sdk_check.mjs http://127.0.0.1:PORT        (run by tests/compat/test_js_sdk.py)
//
// Calls every client method the SDK has over the LangGraph Server API (assistants, threads, runs incl.
// streaming, join and cancel, store, crons), each as one named check that asserts what a client relies on.
// Prints one JSON report on stdout: {"sdk", "node", "results": [{name, route, ok, error?, ms}]}.
// A check whose prerequisite failed fails too ("needs <check>"). Exit code 0 whenever the report is written.
// Not covered: threads.stream() (the SDK's new thread-stream protocol, beyond the Python SDK's API level),
// assistants.getSubgraphs with a namespace and the React hooks.

import { readFileSync } from "node:fs";
import { Client } from "@langchain/langgraph-sdk";

const url = process.argv[2];
if (!url) {
  console.error("usage: node sdk_check.mjs URL");
  process.exit(2);
}
const CHECK_TIMEOUT_MS = 30_000;
const QUESTION = "How do I scale out workers?";

// apiKey null: never pick up LANGGRAPH_API_KEY / LANGSMITH_API_KEY from the environment.
// maxRetries 0: a failing call fails once, quickly, with the server's answer.
const client = new Client({ apiUrl: url, apiKey: null, callerOptions: { maxRetries: 0 } });

const results = [];
// A stray rejection (a bug in a check) must not kill the run before the report is written.
process.on("unhandledRejection", (err) => {
  results.push({ name: "unhandled rejection", route: "-", ok: false, error: String(err?.message ?? err), ms: 0 });
});
const passed = new Set();

function expect(cond, what) {
  if (!cond) throw new Error(`unexpected result: ${what}`);
}

function needs(...names) {
  const missing = names.filter((n) => !passed.has(n));
  if (missing.length) throw new Error(`needs ${missing.join(", ")}`);
}

function ask(text = QUESTION) {
  return { messages: [{ role: "user", content: text }] };
}

function brief(value) {
  const s = JSON.stringify(value);
  return s === undefined ? String(value) : s.length > 300 ? `${s.slice(0, 300)}...` : s;
}

async function check(name, route, fn) {
  const t0 = Date.now();
  let timer;
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS);
      }),
    ]);
    passed.add(name);
    results.push({ name, route, ok: true, ms: Date.now() - t0 });
  } catch (err) {
    const message = String(err?.message ?? err).slice(0, 600);
    results.push({ name, route, ok: false, error: message, ms: Date.now() - t0 });
  } finally {
    clearTimeout(timer);
  }
}

/** An SDK call that must fail with HTTP `status` (the SDK's HTTPError carries it). */
async function expectStatus(status, fn) {
  try {
    await fn();
  } catch (err) {
    expect(err?.status === status, `HTTP ${status} expected, got ${err?.status}: ${err?.message}`);
    return;
  }
  throw new Error(`HTTP ${status} expected, the call succeeded`);
}

async function collect(gen) {
  const parts = [];
  for await (const part of gen) parts.push(part);
  return parts;
}

function assertRunStream(parts, modes) {
  const events = parts.map((p) => p.event);
  expect(events[0] === "metadata", `first event metadata: ${brief(events)}`);
  for (const mode of modes) expect(events.includes(mode), `a ${mode} event in ${brief(events)}`);
  expect(!events.includes("error"), `no error event: ${brief(parts.find((p) => p.event === "error"))}`);
}

function lastAi(values) {
  const ais = (values?.messages ?? []).filter((m) => m.type === "ai");
  expect(ais.length > 0, `an AI message in ${brief(values)}`);
  return ais[ais.length - 1];
}

const s = {}; // ids and objects shared between checks

// ------------------------------------------------------------------------------------------- assistants

await check("assistants.search", "POST /assistants/search", async () => {
  const found = await client.assistants.search({ graphId: "agent", limit: 10 });
  expect(Array.isArray(found) && found.some((a) => a.graph_id === "agent"), brief(found));
  s.systemAssistant = found.find((a) => a.graph_id === "agent");
});
await check("assistants.count", "POST /assistants/count", async () => {
  const n = await client.assistants.count({ graphId: "agent" });
  expect(typeof n === "number" && n >= 1, brief(n));
});
await check("assistants.get", "GET /assistants/{id}", async () => {
  needs("assistants.search");
  const byName = await client.assistants.get("agent");
  const byId = await client.assistants.get(s.systemAssistant.assistant_id);
  expect(byName.assistant_id === byId.assistant_id && byId.graph_id === "agent", brief([byName, byId]));
});
await check("assistants.get(missing) -> 404", "GET /assistants/{id}", async () => {
  await expectStatus(404, () => client.assistants.get(crypto.randomUUID()));
});
await check("assistants.getGraph", "GET /assistants/{id}/graph", async () => {
  const graph = await client.assistants.getGraph("agent");
  const ids = graph.nodes.map((n) => n.id);
  expect(ids.includes("__start__") && ids.includes("retrieve"), brief(ids));
});
await check("assistants.getGraph(xray)", "GET /assistants/{id}/graph?xray", async () => {
  const graph = await client.assistants.getGraph("agent", { xray: true });
  expect(Array.isArray(graph.nodes) && Array.isArray(graph.edges), brief(graph));
});
await check("assistants.getSchemas", "GET /assistants/{id}/schemas", async () => {
  const schemas = await client.assistants.getSchemas("agent");
  expect(schemas.graph_id === "agent" && schemas.input_schema && schemas.state_schema, brief(schemas));
});
await check("assistants.getSubgraphs", "GET /assistants/{id}/subgraphs", async () => {
  const subgraphs = await client.assistants.getSubgraphs("agent");
  expect(subgraphs && typeof subgraphs === "object", brief(subgraphs));
});
await check("assistants.create", "POST /assistants", async () => {
  const a = await client.assistants.create({
    graphId: "agent",
    name: "js-sdk-check",
    metadata: { suite: "js-sdk" },
    config: { configurable: {} },
  });
  expect(a.graph_id === "agent" && a.name === "js-sdk-check" && a.assistant_id, brief(a));
  s.assistant = a;
});
await check("assistants.create(ifExists do_nothing)", "POST /assistants", async () => {
  needs("assistants.create");
  const again = await client.assistants.create({
    graphId: "agent",
    assistantId: s.assistant.assistant_id,
    ifExists: "do_nothing",
  });
  expect(again.assistant_id === s.assistant.assistant_id, brief(again));
});
await check("assistants.update", "PATCH /assistants/{id}", async () => {
  needs("assistants.create");
  const a = await client.assistants.update(s.assistant.assistant_id, {
    metadata: { suite: "js-sdk", step: "updated" },
  });
  expect(a.metadata?.step === "updated" && a.version === 2, brief(a));
});
await check("assistants.getVersions", "POST /assistants/{id}/versions", async () => {
  needs("assistants.update");
  const versions = await client.assistants.getVersions(s.assistant.assistant_id);
  expect(Array.isArray(versions) && versions.length === 2, brief(versions));
});
await check("assistants.setLatest", "POST /assistants/{id}/latest", async () => {
  needs("assistants.update");
  const a = await client.assistants.setLatest(s.assistant.assistant_id, 1);
  expect(a.version === 1, brief(a));
});
await check("runs.wait(created assistant)", "POST /runs/wait", async () => {
  needs("assistants.create");
  const values = await client.runs.wait(null, s.assistant.assistant_id, { input: ask() });
  expect(lastAi(values).content.includes("[1]"), brief(values));
});
await check("assistants.delete", "DELETE /assistants/{id}", async () => {
  needs("assistants.create");
  await client.assistants.delete(s.assistant.assistant_id);
  await expectStatus(404, () => client.assistants.get(s.assistant.assistant_id));
});

// ---------------------------------------------------------------------------------------------- threads

const tag = crypto.randomUUID();
await check("threads.create", "POST /threads", async () => {
  const t = await client.threads.create({ metadata: { suite: "js-sdk", tag } });
  expect(t.thread_id && t.status === "idle" && t.metadata?.tag === tag, brief(t));
  s.thread = t;
});
await check("threads.create(threadId, ifExists)", "POST /threads", async () => {
  needs("threads.create");
  await expectStatus(409, () => client.threads.create({ threadId: s.thread.thread_id }));
  const same = await client.threads.create({ threadId: s.thread.thread_id, ifExists: "do_nothing" });
  expect(same.thread_id === s.thread.thread_id && same.metadata?.tag === tag, brief(same));
});
await check("threads.get", "GET /threads/{id}", async () => {
  needs("threads.create");
  const t = await client.threads.get(s.thread.thread_id);
  expect(t.thread_id === s.thread.thread_id, brief(t));
});
await check("threads.get(missing) -> 404", "GET /threads/{id}", async () => {
  await expectStatus(404, () => client.threads.get(crypto.randomUUID()));
});
await check("threads.update", "PATCH /threads/{id}", async () => {
  needs("threads.create");
  const t = await client.threads.update(s.thread.thread_id, { metadata: { step: "patched" } });
  expect(t.metadata?.step === "patched" && t.metadata?.tag === tag, brief(t));
});
await check("threads.search", "POST /threads/search", async () => {
  needs("threads.create");
  const found = await client.threads.search({ metadata: { tag }, limit: 5 });
  expect(found.length === 1 && found[0].thread_id === s.thread.thread_id, brief(found));
});
await check("threads.count", "POST /threads/count", async () => {
  needs("threads.create");
  const n = await client.threads.count({ metadata: { tag } });
  expect(n === 1, brief(n));
});

// ------------------------------------------------------------------------------------------------- runs

await check("runs.wait", "POST /threads/{id}/runs/wait", async () => {
  needs("threads.create");
  const created = [];
  const values = await client.runs.wait(s.thread.thread_id, "agent", {
    input: ask(),
    onRunCreated: (meta) => created.push(meta),
  });
  const answer = lastAi(values).content;
  expect(typeof answer === "string" && answer.includes("[1]") && answer.includes("scaling.md"), answer);
  expect(created.length === 1 && created[0].run_id, brief(created));
  s.waitRunId = created[0].run_id;
});
await check("runs.get", "GET /threads/{id}/runs/{run_id}", async () => {
  needs("runs.wait");
  const run = await client.runs.get(s.thread.thread_id, s.waitRunId);
  expect(run.run_id === s.waitRunId && run.status === "success", brief(run));
});
await check("runs.list", "GET /threads/{id}/runs", async () => {
  needs("runs.wait");
  const runs = await client.runs.list(s.thread.thread_id, { limit: 10 });
  expect(runs.length === 1 && runs[0].run_id === s.waitRunId, brief(runs));
});
await check("threads.getState", "GET /threads/{id}/state", async () => {
  needs("runs.wait");
  const state = await client.threads.getState(s.thread.thread_id);
  expect(Array.isArray(state.next) && state.next.length === 0 && state.checkpoint?.checkpoint_id, brief(state));
  s.state = state;
});
await check("threads.getState(checkpointId)", "GET /threads/{id}/state/{checkpoint_id}", async () => {
  needs("threads.getState");
  const id = s.state.checkpoint.checkpoint_id;
  const state = await client.threads.getState(s.thread.thread_id, id);
  expect(state.checkpoint.checkpoint_id === id, brief(state));
});
await check("threads.getState(checkpoint)", "POST /threads/{id}/state/checkpoint", async () => {
  needs("threads.getState");
  const id = s.state.checkpoint.checkpoint_id;
  const state = await client.threads.getState(s.thread.thread_id, { checkpoint_id: id });
  expect(state.checkpoint.checkpoint_id === id, brief(state));
});
await check("threads.getHistory", "POST /threads/{id}/history", async () => {
  needs("runs.wait");
  const history = await client.threads.getHistory(s.thread.thread_id, { limit: 50 });
  expect(history.length >= 4, `${history.length} checkpoints`);
  const limited = await client.threads.getHistory(s.thread.thread_id, { limit: 2 });
  expect(limited.length === 2 && limited[0].checkpoint_id === history[0].checkpoint_id, brief(limited));
});
await check("threads.updateState", "POST /threads/{id}/state", async () => {
  needs("runs.wait");
  const config = await client.threads.updateState(s.thread.thread_id, {
    values: { messages: [{ role: "user", content: "a note added by updateState" }] },
  });
  expect(config?.configurable?.checkpoint_id, brief(config));
  const state = await client.threads.getState(s.thread.thread_id);
  expect(state.checkpoint.checkpoint_id === config.configurable.checkpoint_id, brief(state.checkpoint));
});
await check("threads.patchState", "PATCH /threads/{id}/state", async () => {
  needs("runs.wait");
  await client.threads.patchState(s.thread.thread_id, { reviewed: "yes" });
  const state = await client.threads.getState(s.thread.thread_id);
  expect(state.metadata?.reviewed === "yes", brief(state.metadata));
});
await check("runs.wait(stateless)", "POST /runs/wait", async () => {
  const values = await client.runs.wait(null, "agent", { input: ask() });
  expect(lastAi(values).content.includes("[1]"), brief(values));
});
await check("runs.wait(interruptBefore) then command resume", "POST /threads/{id}/runs/wait", async () => {
  const tid = (await client.threads.create()).thread_id;
  await client.runs.wait(tid, "agent", { input: ask(), interruptBefore: ["critique"] });
  const paused = await client.threads.getState(tid);
  expect(paused.next.length === 1 && paused.next[0] === "critique", brief(paused.next));
  const critiqued = (values) => Object.keys(values.critique ?? {}).length > 0;
  expect(!critiqued(paused.values), `no critique yet: ${brief(paused.values.critique)}`);
  expect((await client.threads.get(tid)).status === "interrupted", "thread interrupted");
  const resumed = await client.runs.wait(tid, "agent", { command: { resume: "go on" } });
  // The wait answers the graph's output schema; the resumed run went through critique to the end.
  const outputKeys = ["answer", "messages", "sources", "status"];
  expect(Object.keys(resumed).every((k) => outputKeys.includes(k)), brief(Object.keys(resumed)));
  const summary = { status: resumed.status, answer: Boolean(resumed.answer), keys: Object.keys(resumed) };
  expect(resumed.status === "done" && resumed.answer && lastAi(resumed).content, brief(summary));
  const done = await client.threads.getState(tid);
  expect(done.next.length === 0 && critiqued(done.values), `critiqued: ${brief(done.values.critique)}`);
  expect((await client.threads.get(tid)).status === "idle", "thread idle");
});
await check("runs.stream(values, updates)", "POST /threads/{id}/runs/stream", async () => {
  const tid = (await client.threads.create()).thread_id;
  const parts = await collect(client.runs.stream(tid, "agent", { input: ask(), streamMode: ["values", "updates"] }));
  assertRunStream(parts, ["values", "updates"]);
  const finals = parts.filter((p) => p.event === "values");
  expect(lastAi(finals[finals.length - 1].data).content.includes("[1]"), "a cited answer");
  const runId = parts[0].data.run_id;
  expect((await client.runs.get(tid, runId)).status === "success", "run success");
});
await check("runs.stream(messages-tuple)", "POST /threads/{id}/runs/stream", async () => {
  const tid = (await client.threads.create()).thread_id;
  const parts = await collect(client.runs.stream(tid, "agent", { input: ask(), streamMode: "messages-tuple" }));
  assertRunStream(parts, ["messages"]);
  for (const p of parts.filter((x) => x.event === "messages")) {
    expect(Array.isArray(p.data) && p.data.length === 2 && p.data[1].langgraph_node, brief(p.data));
  }
});
await check("runs.stream(messages)", "POST /threads/{id}/runs/stream", async () => {
  const tid = (await client.threads.create()).thread_id;
  const parts = await collect(client.runs.stream(tid, "agent", { input: ask(), streamMode: "messages" }));
  const events = parts.map((p) => p.event);
  expect(events[0] === "metadata" && events.some((e) => e.startsWith("messages/")), brief(events));
  expect(!events.includes("error"), brief(events));
});
await check("runs.stream(events)", "POST /threads/{id}/runs/stream", async () => {
  const tid = (await client.threads.create()).thread_id;
  const parts = await collect(client.runs.stream(tid, "agent", { input: ask(), streamMode: "events" }));
  assertRunStream(parts, ["events"]);
});
await check("runs.stream(debug)", "POST /threads/{id}/runs/stream", async () => {
  const tid = (await client.threads.create()).thread_id;
  const parts = await collect(client.runs.stream(tid, "agent", { input: ask(), streamMode: "debug" }));
  assertRunStream(parts, ["debug"]);
});
await check("runs.stream(stateless)", "POST /runs/stream", async () => {
  const parts = await collect(client.runs.stream(null, "agent", { input: ask(), streamMode: ["values"] }));
  assertRunStream(parts, ["values"]);
});
await check("runs.stream(streamResumable) + joinStream(lastEventId)", "GET /threads/{id}/runs/{run_id}/stream", async () => {
  const tid = (await client.threads.create()).thread_id;
  const parts = await collect(
    client.runs.stream(tid, "agent", { input: ask(), streamMode: ["values", "updates"], streamResumable: true }),
  );
  assertRunStream(parts, ["values", "updates"]);
  const ids = parts.filter((p) => p.id != null).map((p) => p.id);
  expect(ids.length > 3, `event ids: ${brief(ids)}`);
  const runId = parts[0].data.run_id;
  const tail = await collect(client.runs.joinStream(tid, runId, { lastEventId: ids[2] }));
  const tailIds = tail.filter((p) => p.id != null).map((p) => p.id);
  expect(brief(tailIds) === brief(ids.slice(3)), `replay after ${ids[2]}: ${brief(tailIds)} vs ${brief(ids)}`);
});
await check("runs.create", "POST /threads/{id}/runs", async () => {
  const tid = (await client.threads.create()).thread_id;
  const run = await client.runs.create(tid, "agent", { input: ask() });
  expect(run.run_id && run.thread_id === tid && ["pending", "running"].includes(run.status), brief(run));
  s.bg = run;
});
await check("runs.joinStream", "GET /threads/{id}/runs/{run_id}/stream", async () => {
  needs("runs.create");
  const parts = await collect(client.runs.joinStream(s.bg.thread_id, s.bg.run_id, { streamMode: "updates" }));
  const events = parts.map((p) => p.event);
  expect(events.includes("updates") && !events.includes("error"), brief(events));
});
await check("runs.join", "GET /threads/{id}/runs/{run_id}/join", async () => {
  needs("runs.create");
  const values = await client.runs.join(s.bg.thread_id, s.bg.run_id);
  expect(values.status === "done" && lastAi(values).content.includes("[1]"), brief(values));
});
await check("runs.create(stateless)", "POST /runs", async () => {
  const run = await client.runs.create(null, "agent", { input: ask() });
  expect(run.run_id && ["pending", "running"].includes(run.status), brief(run));
});
await check("runs.cancel", "POST /threads/{id}/runs/{run_id}/cancel", async () => {
  // The second run waits behind the first (multitask "enqueue"), so it is still pending when cancelled.
  const tid = (await client.threads.create()).thread_id;
  const first = await client.runs.create(tid, "agent", { input: ask() });
  const second = await client.runs.create(tid, "agent", { input: ask(), multitaskStrategy: "enqueue" });
  await client.runs.cancel(tid, second.run_id, true);
  const cancelled = await client.runs.get(tid, second.run_id);
  expect(cancelled.status === "interrupted", `cancelled run status ${cancelled.status}`);
  await client.runs.join(tid, first.run_id);
  expect((await client.runs.get(tid, first.run_id)).status === "success", "first run unaffected");
});
await check("runs.cancelMany", "POST /runs/cancel", async () => {
  const tid = (await client.threads.create()).thread_id;
  const first = await client.runs.create(tid, "agent", { input: ask() });
  const second = await client.runs.create(tid, "agent", { input: ask(), multitaskStrategy: "enqueue" });
  await client.runs.cancelMany({ threadId: tid, runIds: [second.run_id] });
  await client.runs.join(tid, first.run_id);
  const after = await client.runs.get(tid, second.run_id);
  expect(after.status === "interrupted", `cancelled run status ${after.status}`);
});
await check("runs.createBatch", "POST /runs/batch", async () => {
  const runs = await client.runs.createBatch([
    { assistantId: "agent", input: ask() },
    { assistantId: "agent", input: ask("What happens to a run after a worker crash?") },
  ]);
  expect(Array.isArray(runs) && runs.length === 2 && runs.every((r) => r.run_id), brief(runs));
});
await check("runs.delete", "DELETE /threads/{id}/runs/{run_id}", async () => {
  const tid = (await client.threads.create()).thread_id;
  const run = await client.runs.create(tid, "agent", { input: ask() });
  await client.runs.join(tid, run.run_id);
  await client.runs.delete(tid, run.run_id);
  await expectStatus(404, () => client.runs.get(tid, run.run_id));
});
await check("runs.wait(unknown assistant) -> 404/422", "POST /threads/{id}/runs/wait", async () => {
  const tid = (await client.threads.create()).thread_id;
  try {
    await client.runs.wait(tid, crypto.randomUUID(), { input: ask() });
  } catch (err) {
    expect([404, 422].includes(err?.status), `HTTP 404/422 expected, got ${err?.status}: ${err?.message}`);
    return;
  }
  throw new Error("an error expected, the call succeeded");
});

// ------------------------------------------------------------------------------ threads (copy, prune, ...)

await check("threads.joinStream", "GET /threads/{id}/stream", async () => {
  const tid = (await client.threads.create()).thread_id;
  const controller = new AbortController();
  const seen = [];
  let streamError = null;
  const joined = (async () => {
    for await (const part of client.threads.joinStream(tid, { signal: controller.signal })) {
      seen.push(part.event);
      if (seen.some((e) => e.startsWith("values"))) break;
    }
  })().catch((err) => {
    if (!controller.signal.aborted) streamError = err;
  });
  const run = await client.runs.create(tid, "agent", { input: ask() });
  await client.runs.join(tid, run.run_id);
  const deadline = Date.now() + 10_000;
  while (!streamError && !seen.some((e) => e.startsWith("values")) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  controller.abort();
  await joined;
  if (streamError) throw streamError;
  expect(seen.some((e) => e.startsWith("values")), `thread stream events: ${brief(seen)}`);
});
await check("threads.copy", "POST /threads/{id}/copy", async () => {
  needs("runs.wait");
  const copy = await client.threads.copy(s.thread.thread_id);
  expect(copy.thread_id && copy.thread_id !== s.thread.thread_id, brief(copy));
  const state = await client.threads.getState(copy.thread_id);
  expect(lastAi(state.values).content.includes("[1]"), "the copy keeps the conversation");
});
await check("threads.prune", "POST /threads/prune", async () => {
  const tid = (await client.threads.create()).thread_id;
  const result = await client.threads.prune([tid]);
  expect(result?.pruned_count === 1, brief(result));
});
await check("threads.delete", "DELETE /threads/{id}", async () => {
  needs("threads.create");
  await client.threads.delete(s.thread.thread_id);
  await expectStatus(404, () => client.threads.get(s.thread.thread_id));
});

// ------------------------------------------------------------------------------------------------ store

const ns = ["js-sdk", tag.slice(0, 8)];
await check("store.putItem", "PUT /store/items", async () => {
  await client.store.putItem(ns, "drink", { text: "Alice drinks green tea" });
  await client.store.putItem([...ns, "pets"], "pet", { text: "Alice has a cat named Miso" });
});
await check("store.getItem", "GET /store/items", async () => {
  needs("store.putItem");
  const item = await client.store.getItem(ns, "drink");
  expect(item?.key === "drink" && item.value?.text === "Alice drinks green tea", brief(item));
  expect(brief(item.namespace) === brief(ns), brief(item.namespace));
});
await check("store.searchItems", "POST /store/items/search", async () => {
  needs("store.putItem");
  const { items } = await client.store.searchItems(ns, { query: "which animal lives with her", limit: 5 });
  expect(items.length === 2 && items[0].key === "pet", brief(items));
});
await check("store.listNamespaces", "POST /store/namespaces", async () => {
  needs("store.putItem");
  const { namespaces } = await client.store.listNamespaces({ prefix: ns });
  const got = namespaces.map((n) => brief(n));
  expect(got.includes(brief(ns)) && got.includes(brief([...ns, "pets"])), brief(namespaces));
});
await check("store.deleteItem", "DELETE /store/items", async () => {
  needs("store.putItem");
  await client.store.deleteItem(ns, "drink");
});
await check("store.getItem(missing) -> null", "GET /store/items", async () => {
  const item = await client.store.getItem(ns, "no-such-key");
  expect(item === null, brief(item));
});

// ------------------------------------------------------------------------------------------------ crons

// Far-future schedules (Jan 1st, 03:00 UTC) that never fire during the test.
const SCHEDULE = "0 3 1 1 *";
await check("crons.create", "POST /runs/crons", async () => {
  const cron = await client.crons.create("agent", { schedule: SCHEDULE, input: ask(), metadata: { tag } });
  expect(cron.cron_id && cron.schedule === SCHEDULE, brief(cron));
  s.cron = cron;
});
await check("crons.createForThread", "POST /threads/{id}/runs/crons", async () => {
  const tid = (await client.threads.create()).thread_id;
  const cron = await client.crons.createForThread(tid, "agent", { schedule: SCHEDULE, input: ask() });
  expect(cron.cron_id && cron.thread_id === tid, brief(cron));
  s.threadCron = cron;
});
await check("crons.search", "POST /runs/crons/search", async () => {
  needs("crons.create");
  const found = await client.crons.search({ assistantId: "agent", limit: 50 });
  expect(found.some((c) => c.cron_id === s.cron.cron_id), brief(found));
});
await check("crons.count", "POST /runs/crons/count", async () => {
  needs("crons.create");
  const n = await client.crons.count({ assistantId: "agent" });
  expect(typeof n === "number" && n >= 1, brief(n));
});
await check("crons.update", "PATCH /runs/crons/{id}", async () => {
  needs("crons.create");
  const cron = await client.crons.update(s.cron.cron_id, { schedule: "0 4 1 1 *" });
  expect(cron.schedule === "0 4 1 1 *", brief(cron));
});
await check("crons.delete", "DELETE /runs/crons/{id}", async () => {
  needs("crons.create");
  await client.crons.delete(s.cron.cron_id);
  if (s.threadCron) await client.crons.delete(s.threadCron.cron_id);
  const found = await client.crons.search({ assistantId: "agent", limit: 50 });
  expect(!found.some((c) => c.cron_id === s.cron.cron_id), brief(found));
});

const sdkVersion = JSON.parse(
  readFileSync(new URL("./node_modules/@langchain/langgraph-sdk/package.json", import.meta.url), "utf8"),
).version;
process.stdout.write(`${JSON.stringify({ sdk: sdkVersion, node: process.version, results })}\n`);
process.exit(0);
