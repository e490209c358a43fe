"""The extractive answer: the passages' whole sentences that answer the question, cited, then the sources.

With an embedder (the one the corpus was indexed with), sentences are ranked by meaning: cosine similarity
to the question, plus a small share for the question's words and for sentences that name a solution. When
no sentence reaches `ANSWER_MIN_SIMILARITY` the engine abstains with `NO_ANSWER_TEXT`. Without an embedder
(unit tests, a store without an index) the ranking falls back to idf-weighted word overlap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.offline.citations import NO_ANSWER_TEXT, SOURCES_HEADER, render_answer
from agent.offline.messages import Document
from agent.offline.questions import (
    DEFINITION_QUESTION_RE,
    KIND_TESTS,
    PARAMETER_LINE_RE,
    QUANTITY_RE,
    SOLUTION_RE,
    asks_for_parameters,
    names_concrete,
    names_solution,
    question_kind,
    question_parts,
)
from agent.offline.semantic import (
    ANSWER_MIN_SIMILARITY,
    CUE_BONUS,
    HEADING_WEIGHT,
    KIND_MARGIN,
    LEXICAL_WEIGHT,
    PARAMETER_PENALTY,
    SUPPORTING_MARGIN,
    TYPE_BONUS,
    Embedder,
    absent_terms,
    cosine_rows,
    embed_matrix,
    similarities,
)
from agent.offline.sentences import Sentence, document_sentences, passage_sentences
from agent.offline.text import followup_context, stems

__all__ = [
    "NO_ANSWER_TEXT",
    "SOURCES_HEADER",
    "Judgement",
    "document_sentences",
    "extractive_answer",
    "judge",
    "question_kind",
    "question_similarities",
]

SOLUTION_LOOKAHEAD = 3
"""How many sentences after a sentence about a how-to question, in its passage, may name the solution."""

ANCHOR_MARGIN = 0.15
"""A sentence scoring within this margin of the best one may anchor the solution that follows it."""


def _solution_after(
    sentences: list[Sentence],
    sims: list[float],
    anchors: list[int],
    skip: set[int],
    names: Callable[[Sentence], bool] = names_concrete,
) -> tuple[int, int] | None:
    """(an anchor, the sentence at most `SOLUTION_LOOKAHEAD` sentences after it in its passage that names
    something concrete to type or run), the follower most similar to the question; None if no anchor has one.
    The follower needs no similarity of its own: the anchor says it is about the question ("One way is to
    build the names automatically." followed by "To enable this, pass the auto_envvar_prefix parameter.")."""
    best: tuple[float, int, int] | None = None
    for rank, i in enumerate(anchors):
        first = sentences[i]
        for j, s in enumerate(sentences):
            if (
                j not in skip
                and s.doc == first.doc
                and 0 < s.position - first.position <= SOLUTION_LOOKAHEAD
                and names(s)
            ):
                key = (sims[j] - 0.01 * rank, i, j)
                if best is None or key[0] > best[0]:
                    best = key
    return (best[1], best[2]) if best is not None else None


def _next_covering(
    sentences: list[Sentence], sims: list[float], picked: list[int], question_stems: list[str]
) -> tuple[int, int] | None:
    """(a picked sentence, the next sentence of its paragraph) when that next sentence names a word of the
    question that no picked sentence names and is itself about the question: the answer continues there
    ("`KEEL_EMBEDDINGS` selects another provider." then "Unset means Keel's default model, ...")."""
    covered = {t for i in picked for t in sentences[i].stems}
    missing = {t for t in question_stems if t not in covered}
    if not missing:
        return None
    for i in picked:
        first = sentences[i]
        for j, s in enumerate(sentences):
            if (
                j not in picked
                and s.doc == first.doc
                and s.unit == first.unit
                and s.position == first.position + 1
                and sims[j] >= ANSWER_MIN_SIMILARITY
                and missing & set(s.stems)
            ):
                return i, j
    return None


REFERS_BACK_RE = re.compile(r"^(?:(?i:it|its|they|their|these|this|that|those)\b|[A-Z][a-z]+ (?:it|them)\b)")
"""A sentence whose subject is in the sentence before it: "It ...", "This ...", "They ...", or an instruction
about "it" ("Use it as the liveness and readiness probe of `keel serve`.")."""


def _make_room(sentences: list[Sentence], picked: list[int], max_sentences: int) -> list[int]:
    """The picks less one when the answer is full: the last one that names nothing concrete to type (a how-to
    answer's solution sentence, "To enable this feature, the auto_envvar_prefix parameter ...", stays), else the
    last one."""
    if len(picked) < max_sentences:
        return picked
    vague = [i for i in picked[1:] if not names_concrete(sentences[i])]
    drop = vague[-1] if vague else picked[-1]
    return [i for i in picked if i != drop][: max_sentences - 1]


def _fit(sentences: list[Sentence], picked: list[int], max_sentences: int, keep: int) -> list[int]:
    """`picked` cut to `max_sentences`, dropping the last sentences past the first `keep` that name nothing
    concrete before any that does (a how-to answer's command or call stays)."""
    out = list(picked)
    while len(out) > max_sentences:
        vague = [i for i in out[keep:] if not names_concrete(sentences[i])]
        out.remove(vague[-1] if vague else out[-1])
    return out


def _antecedents(sentences: list[Sentence]) -> dict[int, int]:
    """For each sentence that refers back (`REFERS_BACK_RE`), the sentence right before it in its paragraph."""
    at = {(s.doc, s.unit, s.position): j for j, s in enumerate(sentences)}
    out: dict[int, int] = {}
    for i, s in enumerate(sentences):
        j = at.get((s.doc, s.unit, s.position - 1))
        if j is not None and REFERS_BACK_RE.match(s.text):
            out[i] = j
    return out


def _with_antecedents(sentences: list[Sentence], picked: list[int], max_sentences: int) -> list[int]:
    """Each picked sentence that refers back ("Use it as the liveness probe.") preceded by the sentence of its
    paragraph that names what it refers to ("`GET /ok` needs no API key."), while the answer has room for it
    (`max_sentences`): an antecedent never displaces a sentence picked for its own score."""
    antecedents = _antecedents(sentences)
    out = list(picked)
    for i in picked:
        j = antecedents.get(i)
        if j is None or j in out or len(out) >= max_sentences:
            continue
        at = out.index(i)
        out = [*out[:at], j, *out[at:]]
    return out


def _idf(question_stems: list[str], stem_sets: list[set[str]]) -> dict[str, float]:
    n = len(stem_sets)
    idf: dict[str, float] = {}
    for stem in question_stems:
        df = sum(1 for words in stem_sets if stem in words)
        if df:
            idf[stem] = math.log(1 + n / df)
    return idf


def question_similarities(
    embedder: Embedder, question: str, texts: Sequence[str], context: str
) -> list[float]:
    """Similarity of each text to the question; a follow-up's is the mean of the question alone and the
    question read with the earlier one (its topic), so neither the new words nor the thread's topic is lost."""
    return _question_sims(embedder, question, list(texts), context)[0]


def _question_sims(
    embedder: Embedder, question: str, texts: list[str], context: str, parts: Sequence[str] = ()
) -> tuple[list[float], list[list[float]]]:
    """The question's similarities to the texts and each part's, the texts embedded once."""
    if not texts:
        return [], [[] for _ in parts]
    queries = [question, *([f"{question} {context}"] if context else []), *parts]
    vectors = embed_matrix(embedder, [*queries, *texts])
    known = vectors[len(queries) :]
    rows = cosine_rows(vectors[: len(queries)], known)
    sims = rows[0] if not context else [(a + b) / 2 for a, b in zip(rows[0], rows[1], strict=True)]
    return sims, rows[len(queries) - len(parts) :]


@dataclass
class Judgement:
    """How well the passages can answer a question: their whole sentences, each one's similarity to the
    question (and to each part of a compound question), and the question's salient terms no passage names."""

    sentences: list[Sentence]
    sims: list[float]
    absent: list[str]
    part_sims: list[list[float]] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(self.sims, default=0.0)

    @property
    def answerable(self) -> bool:
        """Some sentence is about the question, and the passages name everything the question is about."""
        return self.best >= ANSWER_MIN_SIMILARITY and not self.absent


def heading_similarities(
    verdict: Judgement, docs: Sequence[Document], embedder: Embedder, question: str
) -> list[float]:
    """Each passage's section heading (the last part of its heading path) by similarity to the question; 0 for
    a passage without one. Only the share above the passages' mean counts, so a heading lifts the sentences
    of the section that is about the question without lifting every passage."""
    sections = [d.heading.split(" > ")[-1].strip() for d in docs]
    named = [h for h in sections if h]
    if not named or len(docs) < 2:
        return [0.0] * len(docs)
    sims = dict(zip(named, similarities(embedder, question, named), strict=True))
    values = [sims.get(h, 0.0) if h else 0.0 for h in sections]
    mean = sum(values) / len(values)
    return [max(0.0, v - mean) for v in values]


def judge(question: str, docs: Sequence[Document], embedder: Embedder, earlier: str = "") -> Judgement:
    """Shared by the answer and the critic, so both judge "the documents answer this" the same way."""
    sentences = passage_sentences(docs)
    context = followup_context(question, earlier)
    parts = question_parts(question)
    sims, part_sims = _question_sims(embedder, question, [s.text for s in sentences], context, parts)
    absent = absent_terms(question, mentions(docs, sentences, sims))
    return Judgement(sentences, sims, absent, part_sims)


def mentions(docs: Sequence[Document], sentences: list[Sentence], sims: list[float]) -> list[str]:
    """The text in which the question's salient terms count as named: each passage's source and heading, and
    the sentences (with the code and items they carry) that are about the question (`ANSWER_MIN_SIMILARITY`).
    A word named only in passing, in a sentence about something else (a version list naming Redis), does not
    make the passages about it."""
    out = [f"{d.source} {d.heading}" for d in docs]
    for s, sim in zip(sentences, sims, strict=True):
        if sim >= ANSWER_MIN_SIMILARITY:
            out.append(" ".join([s.text, s.code, s.example, *s.items]))
    return out


CONTEXT_DISCOUNT = 0.05
"""A sentence that names something concrete is also read after the sentence before it; that reading, less this,
counts when it is closer to the question than the sentence alone ("By default, a group is not invoked unless a
subcommand is passed." then "This behavior can be changed by passing invoke_without_command=True")."""


def _predecessors(sentences: list[Sentence]) -> dict[int, int]:
    """For each sentence, the sentence right before it in its passage (at most one code block or list item
    between them); a list item quoted with its introduction has none."""
    out: dict[int, int] = {}
    for i in range(1, len(sentences)):
        a, b = sentences[i - 1], sentences[i]
        if a.doc == b.doc and 0 < b.position - a.position <= 2 and b.listed_under < 0:
            out[i] = i - 1
    return out


def context_similarities(question: str, embedder: Embedder, sentences: list[Sentence]) -> dict[int, float]:
    """Similarity to the question of each sentence that names something concrete, read after the one before it:
    the solution sentence often leaves the problem to the sentence before it."""
    preds = {i: j for i, j in _predecessors(sentences).items() if names_concrete(sentences[i])}
    keys = list(preds)
    texts = [f"{sentences[preds[i]].text} {sentences[i].text}" for i in keys]
    sims = similarities(embedder, question, texts) if texts else []
    return dict(zip(keys, sims, strict=True))


COMMAND_BONUS = 0.25
"""Bonus for a how-to answer whose command spells out the whole question ("How do I install Click?":
"You can get the library directly from PyPI: `pip install click`"); such a sentence may answer below
`ANSWER_MIN_SIMILARITY`, which a sentence made mostly of code often scores."""

_BACKTICKED_RE = re.compile(r"`([^`]+)`")


def spelled_out(question: str, sentences: Sequence[Sentence]) -> set[int]:
    """For a how-to question, the sentences whose code (in backticks, the block they introduce, or the example
    after them) names every word of the question: the command that does what the question asks."""
    wanted = set(stems(question))
    if question_kind(question) != "how" or not wanted:
        return set()
    out = set()
    for i, s in enumerate(sentences):
        code = " ".join([*_BACKTICKED_RE.findall(s.text), s.code, s.example])
        if code.strip() and wanted <= set(stems(code)):
            out.add(i)
    return out


def sentence_scores(
    question: str,
    docs: Sequence[Document],
    embedder: Embedder,
    verdict: Judgement,
    commands: set[int] | None = None,
) -> list[float]:
    """Each of the verdict's sentences scored as an answer to `question`: its similarity to the question, plus
    a small share for the question's words, the kind of answer the question asks for and the section heading,
    less `PARAMETER_PENALTY` for an API parameter line the question does not ask about."""
    sentences, sims = verdict.sentences, verdict.sims
    question_stems = stems(question)
    stem_sets = [set(s.stems) for s in sentences]
    idf = _idf(question_stems, stem_sets)
    total = sum(idf.values()) or 1.0
    kind = question_kind(question)
    definition = DEFINITION_QUESTION_RE.match(question.strip())
    defines = definition.group(1).strip().casefold() if definition else None
    headings = heading_similarities(verdict, docs, embedder, question)
    # An API parameter line describes one argument: it answers "which parameter ..." or "what does X accept",
    # not what happens or how to do something, where it otherwise outscores the sentence that says so.
    penalty = 0.0 if asks_for_parameters(question) else PARAMETER_PENALTY
    in_context = context_similarities(question, embedder, sentences)
    commands = spelled_out(question, sentences) if commands is None else commands

    def score(i: int) -> float:
        lexical = sum(w for t, w in idf.items() if t in stem_sets[i]) / total
        s = sentences[i]
        cue = CUE_BONUS if (SOLUTION_RE.search(s.text) or s.code or s.example) else 0.0
        if kind == "how" and (SOLUTION_RE.search(s.text) or s.code or s.example or s.items or s.inline_code):
            cue = TYPE_BONUS  # a how-to question: the instruction, the command, the code
        elif kind == "quantity" and QUANTITY_RE.search(s.text):
            cue = TYPE_BONUS  # how long / how many: a number with its unit
        elif kind == "which" and (s.kind == "item" or "`" in s.text):
            cue = max(cue, TYPE_BONUS / 2)  # which setting / endpoint: a named one
        if defines is not None and re.match(
            rf"(?i)(?:the |a |an )?{re.escape(defines)}\b.{{0,40}}\b(?:is|are)\b", s.text
        ):
            cue = TYPE_BONUS  # "What is X?": the sentence that says "X is ..."
        if i in commands:
            cue = COMMAND_BONUS
        demoted = penalty if PARAMETER_LINE_RE.match(s.text) else 0.0
        sim = max(sims[i], in_context.get(i, -1.0) - CONTEXT_DISCOUNT)
        return sim + LEXICAL_WEIGHT * lexical + cue + HEADING_WEIGHT * headings[s.doc] - demoted

    return [score(i) for i in range(len(sentences))]


def extractive_answer(
    question: str,
    docs: Sequence[Document],
    max_sentences: int,
    embedder: Embedder | None = None,
    context: str = "",
) -> str:
    """The cited answer to `question` from `docs`, or exactly `NO_ANSWER_TEXT`.

    `context` is the conversation's earlier question: a follow-up ("How long does detection take?") is read
    together with it.
    """
    if embedder is None:
        return _lexical_answer(question, docs, max_sentences)
    if not stems(question) or not docs:
        return NO_ANSWER_TEXT
    verdict = judge(question, docs, embedder, context)
    if not verdict.answerable:
        return NO_ANSWER_TEXT  # nothing retrieved is about the question: never quote unrelated text
    sentences, sims = verdict.sentences, verdict.sims

    commands = spelled_out(question, sentences)  # (scored and exempt from the floor below)
    scores = sentence_scores(question, docs, embedder, verdict, commands)
    question_stems = stems(question)
    stem_sets = [set(s.stems) for s in sentences]
    kind = question_kind(question)
    order = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    eligible = [sims[i] >= ANSWER_MIN_SIMILARITY or i in commands for i in range(len(sentences))]
    picked: list[int] = []
    top = max(scores[i] for i in order if eligible[i])
    for i in order:
        if len(picked) >= max_sentences or scores[i] < top - SUPPORTING_MARGIN:
            break
        if not eligible[i] or any(_near_duplicate(stem_sets[i], stem_sets[j]) for j in picked):
            continue
        picked.append(i)
    # A how-to answer's sentences often restate the problem ("By default, X is not ..."; "There is also the
    # case of wanting ..."), and the next sentence or two name the solution ("This can be changed by passing
    # ..."; "To enable this feature, the auto_envvar_prefix parameter ..."): quote it, after its anchor.
    # When the answer already quotes something concrete further down, only a follower that says what to do
    # ("All you have to do is to pass chain=True") takes the second place, not one that merely names a class.
    if kind == "how" and picked and not names_concrete(sentences[picked[0]]):
        anchors = [i for i in order if scores[i] >= top - ANCHOR_MARGIN and sims[i] >= ANSWER_MIN_SIMILARITY]
        has_concrete = any(names_concrete(sentences[i]) for i in picked)
        names = names_solution if has_concrete else names_concrete
        follower = _solution_after(sentences, sims, anchors, set(picked), names)
        if follower is not None:
            anchor, j = follower
            rest = [i for i in picked if i != anchor]
            picked = _fit(sentences, [anchor, j, *rest], max_sentences, keep=2)
    # An answer that leaves a word of the question unsaid may continue in the next sentence of its paragraph.
    elif picked:
        covering = _next_covering(sentences, sims, picked, question_stems)
        if covering is not None:
            anchor, j = covering
            at = picked.index(anchor) + 1
            picked = [*picked[:at], j, *picked[at:]][:max_sentences]
    # A question that asks for a kind of answer (a how-to: code or an instruction; how long/how many: a number)
    # gets the best sentence of that kind too when none of the picked ones is, if it is nearly as good.
    wanted = KIND_TESTS.get(kind)
    if wanted is not None and picked and not any(wanted(sentences[i]) for i in picked):
        for i in order:
            if scores[i] < top - KIND_MARGIN:
                break
            if sims[i] >= ANSWER_MIN_SIMILARITY and wanted(sentences[i]):
                if not any(_near_duplicate(stem_sets[i], stem_sets[j]) for j in picked):
                    picked = [*_make_room(sentences, picked, max_sentences), i]
                break
    # A sentence that refers back ("Use it as the liveness probe") is quoted with the one naming its subject.
    picked = _with_antecedents(sentences, picked, max_sentences)
    # A compound question gets each part's best sentence too, so the answer spans the passages it needs.
    for row in verdict.part_sims:
        best = max(range(len(sentences)), key=lambda i: (row[i], -i))
        if row[best] >= ANSWER_MIN_SIMILARITY and not any(
            _near_duplicate(stem_sets[best], stem_sets[j]) for j in picked
        ):
            picked.append(best)
    return render_answer(docs, sentences, picked) if picked else NO_ANSWER_TEXT


def _lexical_answer(question: str, docs: Sequence[Document], max_sentences: int) -> str:
    """Word-overlap ranking, for an engine built without an embedder."""
    question_stems = stems(question)
    sentences = passage_sentences(docs)
    if not question_stems or not sentences:
        return NO_ANSWER_TEXT
    stem_sets = [set(s.stems) for s in sentences]
    idf = _idf(question_stems, stem_sets)

    def score(i: int, covered: dict[str, None]) -> float:
        gain = sum(
            idf[t] * (0.3 if t in covered else 1.0) for t in question_stems if t in idf and t in stem_sets[i]
        )
        return gain / math.pow(max(len(sentences[i].stems), 1), 0.25)

    # Greedy: the best sentence, then sentences that add a missing question term or score nearly as well.
    picked: list[int] = []
    covered: dict[str, None] = {}
    top = 0.0
    while len(picked) < max_sentences:
        best, best_score = None, 0.0
        for i in range(len(sentences)):
            if i in picked or any(_near_duplicate(stem_sets[i], stem_sets[j]) for j in picked):
                continue
            s = score(i, covered)
            adds = any(t in idf and t in stem_sets[i] and t not in covered for t in question_stems)
            if picked and not adds and s < 0.5 * top:
                continue
            if s > best_score + 1e-12:
                best, best_score = i, s
        if best is None:
            break
        top = top or best_score
        picked.append(best)
        covered.update(dict.fromkeys(t for t in question_stems if t in stem_sets[best]))
    if not picked:
        return NO_ANSWER_TEXT
    return render_answer(docs, sentences, picked)


def _near_duplicate(a: set[str], b: set[str]) -> bool:
    return bool(a and b) and len(a & b) / len(a | b) >= 0.6
