"""Run a scripted scenario against a server and compare two servers' observations.

An observation of one request keeps what a client can rely on, normalised: the status code, the JSON shape
of the body (a set of `path=type` leaves; ids, timestamps and texts vanish into their types) and, for a
Server-Sent Events body, the sequence of event names with the merged data shape of each name. A few
enum-like fields (`status`, `next`, `type`, ...) keep their values, because a client branches on them.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
HEX_ID_RE = re.compile(r"\b[0-9a-f]{16,}\b")

VALUE_KEYS = frozenset(
    {"status", "next", "type", "graph_id", "multitask_strategy", "strategy", "event", "kind", "role", "error"}
)
"""Fields whose value (not only type) is compared: clients branch on them."""

CLIENT_KEYS = frozenset(
    {
        "thread_id", "run_id", "assistant_id", "status", "values", "next", "tasks", "checkpoint",
        "parent_checkpoint", "checkpoint_id", "metadata", "interrupts", "messages", "graph_id", "config",
        "items", "namespace", "namespaces", "key", "value", "detail", "type", "content", "id", "tool_calls",
        "created_at", "updated_at", "version", "name", "cron_id", "schedule", "input_schema", "output_schema",
        "state_schema", "config_schema", "context_schema", "nodes", "edges", "answer", "pruned_count",
        "run_ids", "__error__",
    }
)  # fmt: skip
"""Keys an SDK or UI reads: a missing one (or a changed value of a VALUE_KEYS one) is client-visible."""

IGNORED_RE = re.compile(r"\.(langgraph_\w+|keel_\w+|__\w+__|__pregel_\w+)(?=[.\[=]|$)")
"""Server-private keys (`metadata.langgraph_api_url`, `metadata.keel_epoch`, `configurable.__after_seconds__`):
each server adds its own bookkeeping there and no client reads it, so these leaves are left out of shapes."""

FREE_FORM_KEYS = ("metadata", "kwargs", "configurable", "response_metadata", "additional_kwargs")
"""Maps whose keys are bookkeeping or user data: a key missing below them is a shape difference only."""

STREAM_DEADLINE_S = 20.0
OPEN_STREAM_S = 1.5


def placeholder(text: str) -> str:
    """Ids and hex run/checkpoint ids become placeholders (used in names and enum values)."""
    return HEX_ID_RE.sub("<hex>", UUID_RE.sub("<uuid>", text))


def _leaf_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def shape(value: Any, path: str = "$", key: str | None = None, out: set[str] | None = None) -> set[str]:
    """The set of `path=type` leaves of a JSON value; list elements share the path `[]`."""
    out = set() if out is None else out
    if isinstance(value, dict):
        if not value:
            out.add(f"{path}={{}}")
        for k, v in value.items():
            name = placeholder(str(k))
            shape(v, f"{path}.{name}", name, out)
    elif isinstance(value, list):
        if not value:
            out.add(f"{path}=[]")
        for v in value:
            shape(v, f"{path}[]", key, out)
    elif key in VALUE_KEYS and isinstance(value, str):
        out.add(f"{path}='{placeholder(value)}'")
    else:
        out.add(f"{path}={_leaf_type(value)}")
    return {leaf for leaf in out if not IGNORED_RE.search(leaf)} if path == "$" else out


@dataclass
class Step:
    """One scripted request. `path`, string bodies and params are formatted with the scenario context."""

    name: str
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] | None = None
    sse: bool = False
    open_stream: bool = False
    """The stream stays open (thread stream): read for OPEN_STREAM_S seconds, then hang up."""
    save: Callable[[dict[str, Any], Any], None] | None = None
    before: Callable[[httpx.Client, dict[str, Any]], None] | None = None


@dataclass
class Observation:
    step: str
    request: str
    status: int
    shape: frozenset[str] = frozenset()
    events: tuple[str, ...] = ()
    event_shapes: dict[str, frozenset[str]] = field(default_factory=dict)
    sample: str = ""
    error: str = ""
    elapsed: float = 0.0


def fill(template: Any, ctx: dict[str, Any]) -> Any:
    """Format `{name}` placeholders of strings inside a JSON template with the context."""
    if callable(template):
        return template(ctx)
    if isinstance(template, str):
        return PLACEHOLDER_RE.sub(lambda m: _lookup(ctx, m.group(1), m.group(2)), template)
    if isinstance(template, dict):
        return {fill(k, ctx): fill(v, ctx) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, ctx) for v in template]
    return template


PLACEHOLDER_RE = re.compile(r"\{([a-z_][a-z0-9_]*)(?:\[([a-z_]+)\])?\}")


def _lookup(ctx: dict[str, Any], name: str, item: str | None) -> str:
    value = ctx[name]  # a KeyError names the step whose id is missing (an earlier step failed)
    return str(value[item] if item else value)


def parse_sse(lines: Iterable[str]) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                raw = "\n".join(data)
                try:
                    parsed: Any = json.loads(raw)
                except ValueError:
                    parsed = raw
                events.append((name, parsed))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    return events


def _read_stream(client: httpx.Client, request: httpx.Request, open_stream: bool) -> tuple[int, Any, list]:
    limit = OPEN_STREAM_S if open_stream else STREAM_DEADLINE_S
    response = client.send(request, stream=True)
    try:
        if "text/event-stream" not in response.headers.get("content-type", ""):
            response.read()
            return response.status_code, _json(response), []
        lines: list[str] = []
        started = time.monotonic()
        try:
            for line in response.iter_lines():
                lines.append(line)
                if time.monotonic() - started > limit:
                    break
        except httpx.ReadTimeout:
            pass
        lines.append("")
        return response.status_code, None, parse_sse(lines)
    finally:
        response.close()


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return {"<text>": response.text[:200]}


def observe(client: httpx.Client, step: Step, ctx: dict[str, Any]) -> tuple[Observation, Any]:
    path = fill(step.path, ctx)
    kwargs: dict[str, Any] = {"headers": step.headers or {}}
    if step.content is not None:
        kwargs["content"] = step.content
        kwargs["headers"] = {"content-type": "application/json", **kwargs["headers"]}
    elif step.json is not None:
        kwargs["json"] = fill(step.json, ctx)
    if step.params:
        kwargs["params"] = fill(step.params, ctx)
    request = client.build_request(step.method, path, **kwargs)
    label = f"{step.method} {placeholder(path)}"
    if step.sse or step.open_stream:
        timeout = httpx.Timeout(
            STREAM_DEADLINE_S, read=OPEN_STREAM_S if step.open_stream else STREAM_DEADLINE_S
        )
        request.extensions["timeout"] = timeout.as_dict()
        status, body, events = _read_stream(client, request, step.open_stream)
        if events or body is None:
            names = tuple(placeholder(n) for n, _ in events)
            shapes: dict[str, set[str]] = {}
            for n, data in events:
                shapes.setdefault(placeholder(n), set()).update(shape(data))
            obs = Observation(
                step.name, label, status, events=names, event_shapes={k: frozenset(v) for k, v in shapes.items()},
                sample=" ".join(names)[:300],
            )  # fmt: skip
            return obs, events
    else:
        response = client.send(request)
        status, body = response.status_code, _json(response)
    obs = Observation(
        step.name, label, status, frozenset(shape(body)), sample=placeholder(json.dumps(body))[:300]
    )
    return obs, body


def run_scenario(base_url: str, steps: list[Step], ctx: dict[str, Any] | None = None) -> list[Observation]:
    """Send every step in order; a step's `save` stores ids from its answer in the context for later steps."""
    ctx = dict(ctx or {})
    observations: list[Observation] = []
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        for step in steps:
            try:
                if step.before:
                    step.before(client, ctx)
                started = time.monotonic()
                obs, body = observe(client, step, ctx)
                obs.elapsed = time.monotonic() - started
                if step.save and obs.status < 400:
                    step.save(ctx, body)
            except Exception as exc:  # a failed step is an observation, not a crash
                obs = Observation(
                    step.name, f"{step.method} {step.path}", -1, error=f"{type(exc).__name__}: {exc}"
                )
            observations.append(obs)
    return observations


# -- comparison ------------------------------------------------------------------------------------


@dataclass
class Divergence:
    step: str
    kind: str  # status / shape / events
    client_visible: bool
    reference: str
    keel: str
    request: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.step, self.kind)


def _path_key(leaf: str) -> str:
    return leaf.split("=", 1)[0]


def _last_key(path: str) -> str:
    return path.replace("[]", "").rsplit(".", 1)[-1]


def _reads(leaf: str) -> bool:
    """Whether a client reads this leaf: a CLIENT_KEYS key near the top, outside free-form maps."""
    path = _path_key(leaf)
    free_form = any(f".{k}" in path for k in FREE_FORM_KEYS)
    return path == "$" or (_last_key(path) in CLIENT_KEYS and path.count(".") <= 3 and not free_form)


def shape_diff(ref: frozenset[str], keel: frozenset[str]) -> tuple[list[str], list[str], bool]:
    """Leaves only in the reference, only in Keel, and whether a client would notice."""
    only_ref = sorted(ref - keel, key=lambda leaf: (not _reads(leaf), leaf))  # what a client reads first
    only_keel = sorted(keel - ref, key=lambda leaf: (not _reads(leaf), leaf))
    # a key a client reads is missing in Keel, has another type, or (enum keys) another value
    visible = any(_reads(leaf) for leaf in only_ref)
    return only_ref, only_keel, visible


def _summ(items: list[str], limit: int = 8) -> str:
    if not items:
        return "-"
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def compare(ref: Observation, keel: Observation) -> list[Divergence]:
    out: list[Divergence] = []
    if ref.error or keel.error:
        out.append(
            Divergence(
                ref.step,
                "status",
                True,
                ref.error or str(ref.status),
                keel.error or str(keel.status),
                ref.request,
            )
        )
        return out
    if ref.status != keel.status:
        visible = ref.status // 100 != keel.status // 100
        out.append(
            Divergence(ref.step, "status", visible, f"{ref.status} {ref.sample[:160]}", f"{keel.status} {keel.sample[:160]}", ref.request)
        )  # fmt: skip
        return out  # bodies of different statuses are not comparable
    if ref.events or keel.events:
        if ref.events != keel.events:
            visible = set(ref.events) != set(keel.events)
            only_ref, only_keel = _event_diff(ref.events, keel.events)
            out.append(Divergence(ref.step, "events", visible, only_ref, only_keel, ref.request))
        lines_ref, lines_keel, visible = [], [], False
        for name in sorted(set(ref.event_shapes) & set(keel.event_shapes)):
            only_ref, only_keel, vis = shape_diff(ref.event_shapes[name], keel.event_shapes[name])
            if only_ref or only_keel:
                visible = visible or vis
                lines_ref.append(f"[{name}] {_summ(only_ref, 5)}")
                lines_keel.append(f"[{name}] {_summ(only_keel, 5)}")
        if lines_ref:
            out.append(
                Divergence(
                    ref.step, "shape", visible, "; ".join(lines_ref), "; ".join(lines_keel), ref.request
                )
            )
        return out
    only_ref, only_keel, visible = shape_diff(ref.shape, keel.shape)
    if only_ref or only_keel:
        out.append(Divergence(ref.step, "shape", visible, _summ(only_ref), _summ(only_keel), ref.request))
    return out


def _event_diff(ref: tuple[str, ...], keel: tuple[str, ...]) -> tuple[str, str]:
    """The differing stretches of two event sequences, as `@position: names` on each side."""
    if not ref or not keel:
        return _seq(ref), _seq(keel)
    sides: tuple[list[str], list[str]] = ([], [])
    matcher = difflib.SequenceMatcher(a=ref, b=keel, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "equal":
            sides[0].append(f"@{i1}: {_seq(ref[i1:i2]) if i2 > i1 else '(none)'}")
            sides[1].append(f"@{j1}: {_seq(keel[j1:j2]) if j2 > j1 else '(none)'}")
    return f"{len(ref)} events; " + "; ".join(sides[0][:6]), f"{len(keel)} events; " + "; ".join(sides[1][:6])


def _seq(names: tuple[str, ...]) -> str:
    """An event sequence with runs of the same name collapsed: `metadata values*5 end`."""
    parts: list[str] = []
    for name in names:
        if parts and parts[-1].split("*")[0] == name:
            head, _, count = parts[-1].partition("*")
            parts[-1] = f"{head}*{int(count or 1) + 1}"
        else:
            parts.append(name)
    return " ".join(parts) or "(no events)"
