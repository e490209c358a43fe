"""The critic: does the draft answer the question, is it grounded in the documents, is an abstention right."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from agent.offline.citations import NO_ANSWER_TEXT
from agent.offline.extract import judge, question_similarities
from agent.offline.messages import Document
from agent.offline.questions import SOLUTION_RE, question_kind
from agent.offline.semantic import (
    ANSWER_MIN_SIMILARITY,
    FULL_ANSWER_SPAN,
    GROUNDED_SIMILARITY,
    Embedder,
    cosine_rows,
    embed_matrix,
)
from agent.offline.sentences import document_sentences
from agent.offline.text import CITATION_RE, SENTENCE_SPLIT_RE, WORD_RE, followup_context, stems, terms
from agent.offline.tools import TOOL_COMMAND, parse_tool_command

CRITIC_TOOL_NAME = "Critique"
"""Name of the critic's structured-output schema; forcing it switches the engine to grading."""

_SOURCES_RE = re.compile(r"(?im)^[ \t]*[*_]*sources[*_]*[ \t]*:")


def _strip_answer_decoration(draft: str) -> str:
    return CITATION_RE.sub("", _SOURCES_RE.split(draft, maxsplit=1)[0])


_ABSTAIN_RE = re.compile(
    r"(?i)\b(?:could not find|cannot find|can't find|couldn't find|do(?:es)? not (?:contain|say|mention|answer)|"
    r"don't (?:contain|say|mention)|not (?:in|covered by) the (?:documents|passages|sources))\b"
)


def abstains(draft: str) -> bool:
    """Whether a draft says the documents do not answer (or says nothing)."""
    body = _strip_answer_decoration(draft).strip()
    return (
        not body
        or body.startswith(NO_ANSWER_TEXT)
        or (len(body) < 300 and _ABSTAIN_RE.search(body) is not None)
    )


def _cited(draft: str, docs: Sequence[Document]) -> list[Document]:
    """The documents the draft cites ([n]); all of them when it cites none."""
    numbers = set(re.findall(r"\d+", " ".join(re.findall(r"\[\d+(?:\s*,\s*\d+)*\]", draft))))
    cited = [d for d in docs if d.index in numbers]
    return cited or list(docs)


def _draft_sentences(body: str) -> list[str]:
    prose = re.sub(r"(?s)```.*?```", " ", body)
    return [s.strip() for s in SENTENCE_SPLIT_RE.split(" ".join(prose.split())) if len(s.split()) >= 3]


def _squash(text: str) -> str:
    return " ".join(WORD_RE.findall(CITATION_RE.sub("", text).casefold()))


def _contextual_query(question: str, context: str) -> str:
    """The question read with the conversation's earlier question (a follow-up names its topic there)."""
    return f"{question} {context}".strip() if context else question


def critique(
    question: str,
    draft: str,
    docs: Sequence[Document],
    embedder: Embedder | None = None,
    context: str = "",
) -> dict[str, Any]:
    """Grade `draft` as an answer to `question` from `docs` (see docs/offline.md, "How the engine grades").

    With an embedder: does the draft answer the question (similarity of its best sentence to the question),
    is it grounded (each sentence restates a document sentence), do the cited passages cover the question's
    key terms, and is an abstention right (no document sentence answers). Without one, word overlap.
    """
    command = parse_tool_command(question)
    if command is not None:
        # Retrieval cannot improve a tool command's answer; grade whether the draft reports it.
        named = bool(command.name) and re.search(rf"(?i)\b{re.escape(command.name)}\b", draft) is not None
        reason = (
            f"the draft reports the outcome of {TOOL_COMMAND} {command.name}"
            if named
            else f"the draft does not report the outcome of {TOOL_COMMAND} {command.name}".rstrip()
        )
        return {
            "score": 1.0 if named else 0.0,
            "answers_question": named,
            "grounded": True,
            "abstained": False,
            "missing": [],
            "reasons": [reason],
            "revised_query": question,
        }
    if embedder is None:
        return _lexical_critique(question, draft, docs, context)

    body = _strip_answer_decoration(draft)
    abstained = abstains(draft)
    reasons: list[str] = []
    verdict = judge(question, docs, embedder, context)
    followup = followup_context(question, context)
    if not docs:
        reasons.append("no documents were retrieved, so no claim can be supported")

    # Coverage: the question's key terms found in the passages the draft cites.
    cited_stems: set[str] = set()
    for doc in _cited(draft, docs):
        cited_stems.update(stems(f"{doc.source} {doc.heading}\n{doc.text}"))
    question_terms = _first_surfaces(question)
    missing = [surface for stem, surface in question_terms.items() if stem not in cited_stems]
    coverage = 1 - len(missing) / len(question_terms) if question_terms else 1.0

    if abstained:
        if verdict.absent:
            reasons.append("abstention is right: no document mentions " + ", ".join(verdict.absent))
        elif verdict.best < ANSWER_MIN_SIMILARITY:
            reasons.append(
                f"abstention is right: no sentence of the documents is about the question "
                f"(best similarity {verdict.best:.2f} < {ANSWER_MIN_SIMILARITY})"
            )
        else:
            reasons.append(
                f"abstention is wrong: a sentence of the documents is about the question "
                f"(similarity {verdict.best:.2f})"
            )
        return {
            "score": 0.0,
            "answers_question": False,
            "grounded": True,
            "abstained": True,
            "missing": [*verdict.absent, *missing],
            "reasons": reasons,
            "revised_query": _contextual_query(question, followup),
        }

    sentences = _draft_sentences(body) or [body.strip()]
    doc_sentences = document_sentences(docs)
    relevance = max(question_similarities(embedder, question, sentences, followup))
    grounded_share = 0.0
    if doc_sentences:
        # A quoted sentence is grounded as it stands; only the others are compared by meaning.
        corpus = _squash(" ".join(doc_sentences))
        quoted = [s for s in sentences if _squash(s) in corpus]
        others = [s for s in sentences if _squash(s) not in corpus]
        restated = 0
        if others:
            vectors = embed_matrix(embedder, [*others, *doc_sentences])
            drafted, known = vectors[: len(others)], vectors[len(others) :]
            restated = sum(1 for row in cosine_rows(drafted, known) if max(row) >= GROUNDED_SIMILARITY)
        grounded_share = (len(quoted) + restated) / len(sentences)
    lacks = lacking_kind(question, body)
    answers = relevance >= ANSWER_MIN_SIMILARITY and not verdict.absent and not lacks
    grounded = grounded_share >= 0.5
    strength = min(1.0, max(0.0, (relevance - ANSWER_MIN_SIMILARITY) / FULL_ANSWER_SPAN))
    # A grounded draft that answers the question reaches 0.7 (the default threshold) on those two alone;
    # how strongly it answers and how much of the question its passages cover add the rest.
    score = round(0.35 * answers + 0.35 * grounded_share + 0.15 * strength + 0.15 * coverage, 3)
    if verdict.absent:
        reasons.append("does not answer the question: no document mentions " + ", ".join(verdict.absent))
    elif lacks and relevance >= ANSWER_MIN_SIMILARITY:
        reasons.append(f"does not answer the question: it asks for {lacks} and the draft gives none")
    else:
        reasons.append(
            f"answers the question: similarity {relevance:.2f} to the question"
            if answers
            else f"does not answer the question: similarity {relevance:.2f} < {ANSWER_MIN_SIMILARITY}"
        )
    reasons.append(
        f"grounded {grounded_share:.2f}: share of the draft's sentences that restate the documents"
    )
    reasons.append(
        f"coverage {coverage:.2f}: "
        + (
            "the cited passages name every key term"
            if not missing
            else "missing terms: " + ", ".join(missing)
        )
    )
    revised = question
    if followup:
        revised = _contextual_query(question, followup)  # a follow-up: search with the earlier turn's topic
    elif missing:  # lead with what the cited passages lack, so the next search looks for it
        revised = " ".join(_dedupe_casefold([*missing, *re.findall(r"[\w'-]+", question)]))
    return {
        "score": score,
        "answers_question": answers,
        "grounded": grounded,
        "abstained": False,
        "missing": missing,
        "reasons": reasons,
        "revised_query": revised,
    }


_NUMBER_RE = re.compile(r"\d|\b(?:two|three|four|five|six|seven|eight|nine|ten|twice|half)\b", re.I)


def lacking_kind(question: str, body: str) -> str:
    """What kind of answer the question asks for that the draft lacks ("" when none is lacking): a number for
    "how long/how many", an instruction, command or example for "how do I"."""
    kind = question_kind(question)
    prose = re.sub(r"(?s)```.*?```", " ", body)
    if kind == "quantity" and not _NUMBER_RE.search(prose):
        return "a number"
    if (
        kind == "how"
        and "```" not in body
        and not any(SOLUTION_RE.search(s) for s in SENTENCE_SPLIT_RE.split(" ".join(prose.split())))
    ):
        return "an instruction, a command or an example"
    return ""


def _lexical_critique(question: str, draft: str, docs: Sequence[Document], context: str) -> dict[str, Any]:
    """Word overlap: support (draft words in the documents) and coverage (question words in the draft)."""
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

    no_answer = abstains(draft)
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
    followup = followup_context(question, context)
    if followup and (no_answer or missing):
        revised_query = _contextual_query(question, followup)
    elif missing:
        words = missing + re.findall(r"[\w'-]+", question)
        revised_query = " ".join(_dedupe_casefold(words))
    return {
        "score": score,
        "answers_question": not no_answer and coverage >= 0.5,
        "grounded": support >= 0.7,
        "abstained": no_answer,
        "missing": missing,
        "reasons": reasons,
        "revised_query": revised_query,
    }


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
