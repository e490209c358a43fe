"""keel eval's pure parts: the set loader, the fact matcher, abstention, and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.evaluation.dataset import Turn, fact_present, load_set, source_matches
from server.evaluation.runner import TurnResult, observe
from server.evaluation.scoring import abstained, percentile, score_turn, summarise


def test_fact_matching_alternatives_all_of_regex_and_whitespace():
    text = "Run  more\nworker processes against the same `DATABASE_URL`.\n@click.option('-v', count = True)"
    assert fact_present(["nothing", "more worker processes"], text)
    assert fact_present([["worker processes", "same DATABASE_URL"]], text)
    assert not fact_present([["worker processes", "load balancer"]], text)
    assert fact_present(["count=True"], text)  # code tokens spaced apart by an HTML reader
    assert fact_present([r"re:database_url\.$"], "… the same `DATABASE_URL`.")
    assert fact_present(["it’s “quoted”"], 'It\'s "quoted"')
    assert not fact_present(["5 s"], "after 15 seconds")


def test_sources_are_substrings_of_labels_or_titles():
    assert source_matches(("docs/operations.md",), "/home/u/keel/docs/operations.md")
    assert source_matches(("Options",), "options.html", "Options — Click Documentation")
    assert not source_matches(("docs/operations.md",), "docs/api.md")


def test_load_set_validates(tmp_path):
    good = tmp_path / "s.jsonl"
    good.write_text(
        json.dumps(
            {
                "id": "a",
                "question": "Q?",
                "sources": ["x"],
                "expected": ["y"],
                "followups": [{"question": "And?", "answerable": False}],
            }
        )
        + "\n\n"
        + json.dumps({"question": "Z?", "answerable": False})
        + "\n"
    )
    items = load_set(good)
    assert [t.key for i in items for t in i.turns] == ["a", "a+1", "q3"]
    assert [t.answerable for i in items for t in i.turns] == [True, False, False]
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "sources": ["x"]}) + "\n")
    with pytest.raises(ValueError, match="b.jsonl:1: an answerable question needs 'expected'"):
        load_set(bad)
    bad.write_text(
        json.dumps({"id": "a", "question": "Q?", "answerable": False}) * 1
        + "\n"
        + json.dumps({"id": "a", "question": "R?", "answerable": False})
        + "\n"
    )
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        load_set(bad)


def _result(turn, answer, status="done", sources=()):
    return TurnResult(
        turn,
        "t",
        status=status,
        answer=answer,
        retrievals=[[{"source": s, "title": "", "heading": ""} for s in sources]] if sources else [],
    )


def test_abstention_by_text_status_or_emptiness_and_sources_section_ignored():
    q = Turn("x", 0, "Q?", True, ("a.md",), ["Scaling out"])
    assert abstained(_result(q, "I could not find an answer to that in the knowledge base."))
    assert abstained(_result(q, "The documents do not say.", status="done"))
    assert abstained(_result(q, "Anything", status="abstained:no_support"))
    assert abstained(_result(q, "\n\nSources:\n[1] a.md"))
    assert not abstained(_result(q, "Run more workers [1]."))
    # The fact only in the Sources list (a heading) does not count as answered.
    s = score_turn(
        _result(q, "Use pgbouncer [1].\n\nSources:\n[1] a.md — Scaling out", sources=["b.md", "a.md"])
    )
    assert (s.fact, s.hit_first, s.rank) == (False, True, 2)


def test_summary_figures():
    ans = Turn("a", 0, "Q?", True, ("a.md",), ["yes"])
    fu = Turn("a", 1, "And?", True, ("b.md",), ["more"])
    una = Turn("n", 0, "N?", False)
    una2 = Turn("m", 0, "M?", False)
    rs = [
        _result(ans, "yes [1].", sources=["a.md", "c.md"]),
        _result(fu, "I could not find an answer.", sources=["c.md", "b.md"]),
        _result(una, "I could not find an answer."),
        _result(una2, "Something unrelated [1].", sources=["c.md"]),
    ]
    rs[0].node_ms = {"retrieve": [10.0, 30.0], "summarize": [5.0]}
    rs[1].node_ms = {"retrieve": [20.0]}
    for r, ms in zip(rs, (100.0, 200.0, 300.0, 400.0), strict=True):
        r.total_ms = ms
    f = summarise([score_turn(r) for r in rs])
    assert (f["turns"], f["answerable"], f["unanswerable"], f["followups"], f["k"]) == (4, 2, 2, 1, 2)
    assert f["recall_at_k"] == 1.0 and f["mrr_at_k"] == pytest.approx((1 + 1 / 2) / 2)
    assert f["accuracy"] == 0.5 and f["accuracy_first_turns"] == 1.0 and f["accuracy_followups"] == 0.0
    assert f["abstention"] == 0.5 and f["wrong_refusals"] == 0.5
    assert f["statuses"] == {"done": 4}
    assert f["node_latency_ms"]["retrieve"] == {"n": 3, "p50": 20.0, "p95": pytest.approx(29.0)}
    assert f["turn_latency_ms"] == {"p50": 250.0, "p95": pytest.approx(385.0)}
    assert percentile([7.0], 95) == 7.0


def test_observe_reads_retrievals_timings_and_errors():
    r = TurnResult(Turn("a", 0, "Q?", True, ("a.md",), ["x"]), "t")
    started: dict[str, tuple[str, float]] = {}
    task = {"id": "1", "name": "retrieve"}
    observe(r, "debug", {"type": "task", "timestamp": "2026-01-01T00:00:00+00:00", "payload": task}, started)
    done = {**task, "result": {"passages": [{"source": "a.md", "text": "..."}], "sources": []}}
    observe(
        r,
        "debug",
        {"type": "task_result", "timestamp": "2026-01-01T00:00:00.25+00:00", "payload": done},
        started,
    )
    observe(r, "updates", {"retrieve": {}}, started)
    assert r.retrievals == [[{"source": "a.md", "title": "", "heading": ""}]]
    assert r.node_ms == {"retrieve": [pytest.approx(250.0)]}
    observe(r, "error", {"error": "Boom", "message": "bad"}, started)
    assert r.error == "Boom: bad"


@pytest.mark.parametrize("page", ["docs/benchmarks.md", "docs/eval.md"])
def test_the_pages_that_report_on_the_eval_never_quote_its_questions(page):
    """Keel's own docs are the corpus of Keel's question set, and these two pages write about the eval: a
    question quoted there is a sentence of the corpus that restates the question, which the engine then
    quotes instead of the answer (it happened twice). Name turns by their ids instead."""
    root = Path(__file__).resolve().parents[2]
    text = " ".join((root / page).read_text(encoding="utf-8").casefold().split())
    questions = [
        turn.question
        for name in ("keel-docs.jsonl", "click-docs.jsonl")
        for item in load_set(root / "evals" / name)
        for turn in item.turns
    ]
    assert len(questions) > 60
    quoted = [q for q in questions if " ".join(q.casefold().split()) in text]
    assert quoted == []
