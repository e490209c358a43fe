"""The critic: grade a draft's support (in the documents) and coverage (of the question), with reasons."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from agent.offline.extract import NO_ANSWER_TEXT
from agent.offline.messages import Document
from agent.offline.text import CITATION_RE, stems, terms
from agent.offline.tools import TOOL_COMMAND, parse_tool_command

CRITIC_TOOL_NAME = "Critique"
"""Name of the critic's structured-output schema; forcing it switches the engine to grading."""

_SOURCES_RE = re.compile(r"(?im)^[ \t]*[*_]*sources[*_]*[ \t]*:")


def _strip_answer_decoration(draft: str) -> str:
    return CITATION_RE.sub("", _SOURCES_RE.split(draft, maxsplit=1)[0])


def critique(question: str, draft: str, docs: Sequence[Document]) -> dict[str, Any]:
    command = parse_tool_command(question)
    if command is not None:
        # Retrieval cannot improve a tool command's answer; grade whether the draft reports it.
        named = bool(command.name) and re.search(rf"(?i)\b{re.escape(command.name)}\b", draft) is not None
        reason = (
            f"the draft reports the outcome of {TOOL_COMMAND} {command.name}"
            if named
            else f"the draft does not report the outcome of {TOOL_COMMAND} {command.name}".rstrip()
        )
        return {"score": 1.0 if named else 0.0, "reasons": [reason], "revised_query": question}

    question_terms = _first_surfaces(question)
    body = _strip_answer_decoration(draft)
    draft_terms = _first_surfaces(body)
    doc_stems = set()
    for doc in docs:
        doc_stems.update(stems(f"{doc.heading}\n{doc.text}"))

    unsupported = [surface for stem, surface in draft_terms.items() if stem not in doc_stems]
    support = 1 - len(unsupported) / len(draft_terms) if draft_terms else 0.0
    missing = [surface for stem, surface in question_terms.items() if stem not in draft_terms]
    coverage = 1 - len(missing) / len(question_terms) if question_terms else 1.0

    no_answer = not body.strip() or draft.strip().startswith(NO_ANSWER_TEXT)
    score = 0.0 if no_answer else round(0.5 * support + 0.5 * coverage, 3)

    reasons = []
    if no_answer:
        reasons.append("the draft does not answer the question")
    if not docs:
        reasons.append("no documents were retrieved, so no claim can be supported")
    if not no_answer:
        if support == 1:
            detail = "every claim appears in the documents"
        elif support >= 0.7:
            detail = "most claims appear in the documents; unsupported terms: " + ", ".join(unsupported[:6])
        else:
            detail = "many claims do not appear in the documents; unsupported terms: " + ", ".join(
                unsupported[:6]
            )
        reasons.append(f"support {support:.2f}: {detail}")
    if missing:
        reasons.append(f"coverage {coverage:.2f}: missing terms: " + ", ".join(missing))
    else:
        reasons.append(f"coverage {coverage:.2f}: the draft addresses every term of the question")

    revised_query = question
    if missing:
        words = missing + re.findall(r"[\w'-]+", question)
        revised_query = " ".join(_dedupe_casefold(words))
    return {"score": score, "reasons": reasons, "revised_query": revised_query}


def _first_surfaces(text: str) -> dict[str, str]:
    """stem -> the first surface word that produced it, in order."""
    out: dict[str, str] = {}
    for surface, stem in terms(text):
        out.setdefault(stem, surface)
    return out


def _dedupe_casefold(words: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    for word in words:
        seen.setdefault(word.casefold(), word)
    return list(seen.values())


def is_critic_schema(spec: dict[str, Any]) -> bool:
    properties = (spec.get("parameters") or {}).get("properties") or {}
    return str(spec.get("name", "")).casefold() == CRITIC_TOOL_NAME.casefold() or {
        "score",
        "revised_query",
    } <= set(properties)
