"""`keel eval` end to end on a tiny corpus: runs through the real engine and Postgres, figures, report, plot."""

from __future__ import annotations

import json
import socket

import pytest

CORPUS = {
    "capacitor.md": "# Flux capacitor\n\nThe flux capacitor needs 1.21 gigawatts of power to operate.\n",
    "harbor.md": "# Harbor\n\nThe harbor master opens the north gate at dawn. Ships wait in the outer basin.\n",
    "bakery.md": "# Bakery\n\nThe bakery sells rye bread on Tuesdays.\n",
}
SET = [
    {
        "id": "power",
        "question": "How much power does the flux capacitor need?",
        "sources": ["capacitor.md"],
        "expected": ["1.21 gigawatts"],
        "followups": [
            {
                "question": "When does the harbor master open the north gate?",
                "sources": ["harbor.md"],
                "expected": [["north gate", "dawn"]],
            }
        ],
    },
    # No word of it occurs in the corpus: the only right outcome is to say so.
    {"id": "absent", "question": "Which quasar emits xylophone radiation?", "answerable": False},
    # Deliberately mislabelled: neither the source nor the fact exists, so both verdicts must be "miss".
    {
        "id": "mislabelled",
        "question": "What does the bakery sell on Tuesdays?",
        "sources": ["pastry.md"],
        "expected": ["croissants"],
    },
    {
        "id": "bread",
        "question": "What does the bakery sell on Tuesdays?",
        "sources": ["bakery.md"],
        "expected": ["rye bread"],
    },
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workspace(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in CORPUS.items():
        (corpus / name).write_text(text)
    qset = tmp_path / "tiny.jsonl"
    qset.write_text("".join(json.dumps(item) + "\n" for item in SET))
    return corpus, qset, tmp_path / "out"


def test_keel_eval_figures_report_and_langsmith_wiring(workspace, fresh_database_url, monkeypatch, capsys):
    from server.cli.entry import build_parser
    from server.settings import Settings

    corpus, qset, out = workspace
    args = build_parser().parse_args(
        ["eval", str(qset), "--corpus", str(corpus), "--out", str(out), "--timeout", "60"]
    )
    # A key is set, so the LangSmith path is taken; its endpoint is a closed local port (no network here),
    # so the upload fails after the local report is written, and the command says so and exits 1.
    monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2_fake")
    monkeypatch.setenv("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    rc = args.func(args, Settings(database_url=fresh_database_url))
    captured = capsys.readouterr()
    assert rc == 1, captured
    assert "LangSmith evaluate failed" in captured.err

    data = json.loads((out / "tiny.json").read_text())
    figures = data["figures"]
    turns = {t["key"]: t for t in data["turns"]}
    assert list(turns) == ["power", "power+1", "absent", "mislabelled", "bread"]
    assert "1.21 gigawatts" in turns["power"]["answer"] and turns["absent"]["abstained"] is True
    assert turns["mislabelled"]["source_rank"] is None and turns["bread"]["source_rank"] is not None
    assert (figures["turns"], figures["answerable"], figures["unanswerable"], figures["followups"]) == (
        5,
        4,
        1,
        1,
    )
    assert figures["errors"] == 0
    assert 1 <= figures["k"] <= 3  # three one-chunk files
    assert figures["recall_at_k"] == 0.75  # every labelled source retrieved; pastry.md does not exist
    assert figures["accuracy"] == 0.75  # power, its follow-up and bread right; croissants nowhere
    assert figures["accuracy_first_turns"] == pytest.approx(2 / 3)
    assert figures["accuracy_followups"] == 1.0
    assert figures["abstention"] == 1.0
    assert figures["wrong_refusals"] == 0.0
    assert sum(figures["statuses"].values()) == 5
    nodes = figures["node_latency_ms"]
    assert {"retrieve", "summarize", "critique"} <= set(nodes)
    assert nodes["retrieve"]["n"] >= 5
    for v in nodes.values():
        assert 0 < v["p50"] <= v["p95"]
    assert 0 < figures["turn_latency_ms"]["p50"] <= figures["turn_latency_ms"]["p95"]

    report = (out / "tiny.md").read_text()
    assert "| answer accuracy (expected fact in the answer) | 75.0% |" in report
    assert "| abstention on unanswerable questions | 100.0% |" in report
    assert "| mislabelled | yes | miss | **no** |" in report
    assert "| power+1 | yes | 1 | yes | no |" in report
    assert (out / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny: 5 turns; recall@" in captured.out and "accuracy 75.0%" in captured.out


def test_langsmith_evaluators_score_like_keel_eval():
    """The LangSmith experiment's evaluators give the verdicts of the local report (run locally, no upload)."""
    from langsmith import Client

    from server.evaluation.dataset import Turn
    from server.evaluation.langsmith_eval import publish
    from server.evaluation.runner import TurnResult
    from server.evaluation.scoring import score_turn

    hit = [{"source": "capacitor.md", "title": "", "heading": ""}]
    results = [
        TurnResult(
            Turn("a", 0, "How much power?", True, ("capacitor.md",), ["1.21 gigawatts"]),
            "t1",
            status="done",
            answer="It needs 1.21 gigawatts [1].\n\nSources:\n[1] capacitor.md",
            retrievals=[hit],
        ),
        TurnResult(
            Turn("b", 0, "Which quasar?", False),
            "t2",
            status="done",
            answer="I could not find an answer to that in the knowledge base.",
        ),
        TurnResult(
            Turn("c", 0, "Which quasar again?", False),
            "t3",
            status="done",
            answer="The flux capacitor needs 1.21 gigawatts [1].",
            retrievals=[hit],
        ),
    ]
    client = Client(api_key="lsv2_fake", api_url=f"http://127.0.0.1:{_closed_port()}")
    rows = list(publish([score_turn(r) for r in results], "tiny", client, metadata={}, upload=False))
    verdicts = {
        row["example"].inputs["key"]: {e.key: e.score for e in row["evaluation_results"]["results"]}
        for row in rows
    }
    assert verdicts == {
        "a": {"fact": 1, "correct_abstention": 1, "recall_at_k": 1},
        "b": {"fact": None, "correct_abstention": 1, "recall_at_k": None},
        "c": {"fact": None, "correct_abstention": 0, "recall_at_k": None},
    }
