"""The Markdown report and the PNG plot of one evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.evaluation.scoring import Scored, answer_body


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _cell(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def markdown(title: str, meta: dict[str, Any], figures: dict[str, Any], scored: list[Scored]) -> str:
    f = figures
    mrr = "n/a" if f["mrr_at_k"] is None else f"{f['mrr_at_k']:.3f}"
    lines = [
        f"# {title}",
        "",
        *(f"- {k}: {v}" for k, v in meta.items()),
        "",
        "## Figures",
        "",
        "| measure | value |",
        "|---|---|",
        f"| turns (answerable / unanswerable / follow-ups) | {f['turns']} ({f['answerable']} / "
        f"{f['unanswerable']} / {f['followups']}) |",
        f"| recall@{f['k']} (acceptable source in the first retrieval) | {_pct(f['recall_at_k'])} |",
        f"| recall, any retrieval of the turn | {_pct(f['recall_any_pass'])} |",
        f"| MRR@{f['k']} | {mrr} |",
        f"| answer accuracy (expected fact in the answer) | {_pct(f['accuracy'])} |",
        f"| accuracy, first turns / follow-ups | {_pct(f['accuracy_first_turns'])} / "
        f"{_pct(f['accuracy_followups'])} |",
        f"| abstention on unanswerable questions | {_pct(f['abstention'])} |",
        f"| wrong refusals on answerable questions | {_pct(f['wrong_refusals'])} |",
        f"| runs that failed or timed out | {f['errors']} |",
        f"| turn latency p50 / p95 (ms) | {f['turn_latency_ms'].get('p50', 0):.0f} / "
        f"{f['turn_latency_ms'].get('p95', 0):.0f} |",
        "",
        "## Final status",
        "",
        "| status | turns |",
        "|---|---|",
        *(f"| `{s}` | {n} |" for s, n in f["statuses"].items()),
        "",
        "## Node latency",
        "",
        "| node | executions | p50 ms | p95 ms |",
        "|---|---|---|---|",
        *(
            f"| {node} | {v['n']} | {v['p50']:.1f} | {v['p95']:.1f} |"
            for node, v in f["node_latency_ms"].items()
        ),
        "",
        "## Questions",
        "",
        "| id | answerable | source rank | fact | abstained | status | ms | answer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in scored:
        r, t = s.result, s.result.turn
        rank = "—" if not t.answerable else (str(s.rank) if s.rank else "miss")
        fact = "—" if s.fact is None else ("yes" if s.fact else "**no**")
        ok_abstain = s.abstained != t.answerable
        abst = ("yes" if s.abstained else "no") if ok_abstain else f"**{'yes' if s.abstained else 'no'}**"
        lines.append(
            f"| {t.key} | {'yes' if t.answerable else 'no'} | {rank} | {fact} | {abst} | "
            f"`{r.status or r.run_status}` | {r.total_ms:.0f} | {_cell(t.question, 80)} → "
            f"{_cell(r.error or answer_body(r.answer))} |"
        )
    return "\n".join(lines) + "\n"


def turns_json(scored: list[Scored]) -> list[dict[str, Any]]:
    """Each turn's verdicts and what the engine did, for reading answers or comparing two runs."""
    return [
        {
            "key": s.result.turn.key,
            "question": s.result.turn.question,
            "answerable": s.result.turn.answerable,
            "fact": s.fact,
            "abstained": s.abstained,
            "source_rank": s.rank,
            "status": s.result.status,
            "run_status": s.result.run_status,
            "error": s.result.error,
            "revisions": s.result.revisions,
            "ms": round(s.result.total_ms, 1),
            "retrieved": [p["source"] for p in (s.result.retrievals[0] if s.result.retrievals else [])],
            "answer": s.result.answer,
        }
        for s in scored
    ]


def plot(path: Path, title: str, figures: dict[str, Any]) -> None:
    """Quality bars (accuracy, recall, abstention, wrong refusals) and per-node latency p50/p95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = figures
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = ["accuracy", f"recall@{f['k']}", "abstention\n(unanswerable)", "wrong refusals\n(answerable)"]
    values = [f["accuracy"], f["recall_at_k"], f["abstention"], f["wrong_refusals"]]
    heights = [0.0 if v is None else 100 * v for v in values]
    bars = left.bar(labels, heights, color=["#4c72b0", "#55a868", "#8172b2", "#c44e52"])
    for bar, v in zip(bars, values, strict=True):
        left.annotate(
            _pct(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom"
        )
    left.set_ylim(0, 110)
    left.set_ylabel("%")
    left.set_title("Answer quality")
    nodes = list(f["node_latency_ms"])
    xs = range(len(nodes))
    p50 = [f["node_latency_ms"][n]["p50"] for n in nodes]
    p95 = [f["node_latency_ms"][n]["p95"] for n in nodes]
    right.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    right.bar([x + 0.2 for x in xs], p95, width=0.4, label="p95")
    right.set_xticks(list(xs), nodes)
    right.set_ylabel("ms")
    right.set_title("Node latency")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
