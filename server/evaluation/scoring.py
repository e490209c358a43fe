"""Scores of a question set's runs: recall@k, answer accuracy, abstention, statuses, node latency."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from server.evaluation.dataset import fact_present, source_matches
from server.evaluation.runner import TurnResult

# An answer that says the documents do not answer (the offline engine's sentence, a real model's phrasings).
ABSTAIN_TEXT = re.compile(
    r"could ?n[o']t find|can ?n[o']t find|cannot find|unable to find|did ?n[o']t find|no answer (to|for|in)"
    r"|(do|does|did) ?n[o']t (say|mention|cover|contain|describe|explain)|not (covered|mentioned|described|found) in"
    r"|(don'?t|do not) know|nothing (in|about) (the|this)|no (relevant|matching) (documents?|passages?|information)",
    re.IGNORECASE,
)
# A final status that says the turn abstained (e.g. "abstained:no_support", "no_answer").
ABSTAIN_STATUS = re.compile(
    r"abstain|no_answer|not_found|unanswer|insufficient|refus|no_support", re.IGNORECASE
)
SOURCES_SECTION = re.compile(r"\n\s*(\*\*)?Sources:?(\*\*)?\s*\n.*\Z", re.DOTALL)


def answer_body(answer: str) -> str:
    """The answer without its trailing `Sources:` list (headings there must not count as the fact)."""
    return SOURCES_SECTION.sub("", answer)


def abstained(result: TurnResult) -> bool:
    """Whether the turn declined to answer: an abstaining status, an "I could not find" answer, or none."""
    if ABSTAIN_STATUS.search(result.status):
        return True
    body = answer_body(result.answer).strip()
    return not body or ABSTAIN_TEXT.search(body) is not None


@dataclass
class Scored:
    """One turn's verdicts (None where a verdict does not apply)."""

    result: TurnResult
    abstained: bool
    fact: bool | None
    hit_first: bool | None
    hit_any: bool | None
    rank: int | None


def score_turn(r: TurnResult) -> Scored:
    t = r.turn
    did_abstain = abstained(r)
    if not t.answerable:
        return Scored(r, did_abstain, None, None, None, None)
    fact = fact_present(t.expected, answer_body(r.answer))
    first = r.retrievals[0] if r.retrievals else []
    rank = next(
        (i for i, p in enumerate(first, start=1) if source_matches(t.sources, p["source"], p["title"])), None
    )
    hit_any = any(source_matches(t.sources, p["source"], p["title"]) for ps in r.retrievals for p in ps)
    return Scored(r, did_abstain, fact, rank is not None, hit_any, rank)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of non-empty values."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def summarise(scored: list[Scored]) -> dict[str, Any]:
    """The set's figures. Rates are fractions (None when their denominator is 0); latencies are ms."""
    ans = [s for s in scored if s.result.turn.answerable]
    una = [s for s in scored if not s.result.turn.answerable]
    first_turns = [s for s in ans if s.result.turn.turn == 0]
    followups = [s for s in ans if s.result.turn.turn > 0]
    k = max((len(s.result.retrievals[0]) for s in scored if s.result.retrievals), default=0)
    node_ms: dict[str, list[float]] = {}
    for s in scored:
        for node, ms in s.result.node_ms.items():
            node_ms.setdefault(node, []).extend(ms)
    totals = [s.result.total_ms for s in scored]
    return {
        "turns": len(scored),
        "answerable": len(ans),
        "unanswerable": len(una),
        "followups": sum(1 for s in scored if s.result.turn.turn > 0),
        "k": k,
        "recall_at_k": _rate(sum(bool(s.hit_first) for s in ans), len(ans)),
        "recall_any_pass": _rate(sum(bool(s.hit_any) for s in ans), len(ans)),
        "mrr_at_k": (sum(1.0 / s.rank for s in ans if s.rank) / len(ans)) if ans else None,
        "accuracy": _rate(sum(bool(s.fact) for s in ans), len(ans)),
        "accuracy_first_turns": _rate(sum(bool(s.fact) for s in first_turns), len(first_turns)),
        "accuracy_followups": _rate(sum(bool(s.fact) for s in followups), len(followups)),
        "abstention": _rate(sum(s.abstained for s in una), len(una)),
        "wrong_refusals": _rate(sum(s.abstained for s in ans), len(ans)),
        "errors": sum(1 for s in scored if s.result.error),
        "statuses": dict(
            Counter(s.result.status or f"run:{s.result.run_status}" for s in scored).most_common()
        ),
        "node_latency_ms": {
            node: {"n": len(ms), "p50": percentile(ms, 50), "p95": percentile(ms, 95)}
            for node, ms in sorted(node_ms.items())
        },
        "turn_latency_ms": {"p50": percentile(totals, 50), "p95": percentile(totals, 95)} if totals else {},
    }
