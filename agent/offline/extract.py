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

from agent.offline.messages import Document
from agent.offline.semantic import (
    ANSWER_MIN_SIMILARITY,
    CUE_BONUS,
    HEADING_WEIGHT,
    KIND_MARGIN,
    LEXICAL_WEIGHT,
    SUPPORTING_MARGIN,
    TYPE_BONUS,
    Embedder,
    absent_terms,
    cosine_rows,
    similarities,
)
from agent.offline.text import CITATION_RE, SENTENCE_SPLIT_RE, WORD_RE, followup_context, stems

NO_ANSWER_TEXT = "I could not find this in the documents."
"""The whole answer when the retrieved documents do not contain one."""

SOURCES_HEADER = "Sources:"
"""First line of the sources section that ends every extractive answer."""

_HEADING_RE = re.compile(r"^#{1,6}\s+(.*?)\s*#*$")

_BULLET_RE = re.compile(r"^(?:[-*+]|\d+[.)])\s+(.*)$")

_RULE_RE = re.compile(r"^(?:-{3,}|\*{3,}|_{3,})$")

_FENCE_RE = re.compile(r"^(?:```|~~~)")

_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "no.", "dr.", "mr.", "ms.")

EXAMPLE_MAX_LINES = 15
"""Longest code example quoted after the paragraph it follows (longer code is a listing, not an example)."""

INTRO_MAX_ITEMS = 6
"""Most list items quoted with the sentence that introduces them."""

ITEM_MAX_WORDS = 12
"""A list item without a full stop and longer than this is a sentence that a chunk boundary cut off."""

_TERMINAL_RE = re.compile(r"[.!?:][)\"'`*_\]]*$")

SOLUTION_RE = re.compile(
    r"(?i)^(?:to [^,]{3,80}, )?(?:run|set|use|start|add|call|pass|install|configure|create|send|point|give|put|"
    r"enable|disable|scale|deploy|ingest|open|write|choose|pick|increase|raise|lower|export|mount|restart|stop|"
    r"resume|register|keep|make|mark|attach|replace|delete|remove|list|ask|tell|select|return|raise|check)\b"
    r"|\byou can\b|\bby (?:setting|running|passing|adding|starting|calling)\b|`[A-Z][A-Z0-9_]{2,}`|`keel [a-z]"
)

_DEFINITION_QUESTION_RE = re.compile(r"(?i)^what (?:is|are) (?:the |a |an )?([^?]{2,60}?)\s*\??$")
"""A question asking what something is: the sentence that says "X is ..." names the answer."""

_QUANTITY_QUESTION_RE = re.compile(
    r"(?i)\b(?:how (?:long|many|much|often|big|large|fast|soon|quickly)|what is the (?:default|maximum|"
    r"minimum|limit|size|timeout))\b|^(?:and |so )?when\b"
)
"""A question about a quantity or a duration ("when" only as its first word: "... even when X" is not one)."""


_HOW_QUESTION_RE = re.compile(
    r"(?i)^(?:and |so |then )?(?:how (?:do|can|should|would|could|to)\b|what (?:should|do|must) i\b)"
)

_WHICH_QUESTION_RE = re.compile(
    r"(?i)^(?:and |so |then )?(?:which|what (?:setting|variable|option|flag|endpoint|command|parameter|field|header|status|mode|tool|value)s?)\b"
)

_QUANTITY_RE = re.compile(
    r"(?i)\b\d[\d,.]*(?:\s*(?:-|to|and)\s*\d[\d,.]*)?[\s-]*(?:%|ms|s\b|sec|second|minute|min\b|hour|day|week|"
    r"month|year|byte|[kmg]i?b\b|kb|mb|gb|token|dimension|dims?\b|time|run|worker|process|passage|char|row|line|"
    r"request|retr|attempt|connection|item|entr|event|vector|step|thread|percent|x\b)"
    r"|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|twice|half)\s+(?:second|minute|hour|day|time|"
    r"worker|process|run|step|passage|attempt)"
)
"""A number with its unit ("5 to 7 seconds", "384-dimensional", "twice k")."""


_KIND_TESTS: dict[str, Callable[[_Sentence], bool]] = {
    "how": lambda s: bool(s.code or s.example),
    "quantity": lambda s: _QUANTITY_RE.search(s.text) is not None,
}
"""For a question of that kind: whether a sentence gives the kind of answer it asks for."""


SOLUTION_LOOKAHEAD = 2
"""How many sentences after a how-to answer's best sentence, in its paragraph, may name the solution."""


def _names_solution(s: _Sentence) -> bool:
    return bool(SOLUTION_RE.search(s.text) or s.code or s.example)


def _solution_after(sentences: list[_Sentence], picked: list[int]) -> tuple[int, int] | None:
    """(a picked sentence, the sentence naming a solution at most `SOLUTION_LOOKAHEAD` sentences after it in
    its paragraph), for the best-ranked picked sentence that has one; None if none has."""
    for i in picked:
        first = sentences[i]
        for j, s in enumerate(sentences):
            if (
                s.doc == first.doc
                and s.unit == first.unit
                and 0 < s.position - first.position <= SOLUTION_LOOKAHEAD
                and _names_solution(s)
            ):
                return i, j
    return None


def question_kind(question: str) -> str:
    """What a question asks for: "quantity" (how long / how many), "how" (how to do something), "which" (a
    named setting, endpoint or option), or "" (anything else, "what is" included)."""
    q = question.strip()
    if _QUANTITY_QUESTION_RE.search(q):
        return "quantity"
    if _HOW_QUESTION_RE.match(q):
        return "how"
    if _WHICH_QUESTION_RE.match(q):
        return "which"
    return ""


@dataclass
class _Unit:
    kind: str
    """prose | item (a list item or table row) | code"""
    text: str


@dataclass
class _Sentence:
    doc: int
    position: int
    text: str
    kind: str
    stems: list[str] = field(default_factory=list)
    code: str = ""
    """The code block that follows this sentence, when the sentence introduces it ("...:")."""
    items: list[str] = field(default_factory=list)
    """The list items that follow this sentence, when the sentence introduces them ("...:")."""
    unit: int = -1
    """The paragraph (unit) of its passage the sentence belongs to."""
    example: str = ""
    """The code example right after the sentence's paragraph (at most `EXAMPLE_MAX_LINES` lines)."""


def _inline_cleanup(text: str) -> str:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def _passage_units(text: str) -> list[_Unit]:
    """Paragraphs, list items and code blocks of a Markdown passage, without headings, rules or bullets."""
    units: list[_Unit] = []
    current: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if current:
            units.append(_Unit("prose", " ".join(current)))
            current.clear()

    lines = text.splitlines()
    fences = [i for i, raw in enumerate(lines) if _FENCE_RE.match(raw.strip())]
    if len(fences) % 2 and lines[fences[0]].strip() in ("```", "~~~"):
        # An odd number of fences whose first one is bare: the chunk starts inside a code block (an opening
        # fence usually names its language), so what comes before that fence is code, not prose.
        lines = lines[fences[0] + 1 :]
    for raw in lines:
        line = raw.strip()
        if _FENCE_RE.match(line):
            if code is None:
                flush()
                code = []
            else:
                # A one-line snippet introduced by "...:" reads naturally inline; longer code stays a block.
                if units and units[-1].kind != "code" and units[-1].text.endswith(":") and len(code) == 1:
                    units[-1].text += " `" + code[0] + "`"
                elif code:
                    units.append(_Unit("code", "\n".join(code)))
                code = None
            continue
        if code is not None:
            if line:
                code.append(raw.rstrip())
            continue
        if not line or _RULE_RE.match(line) or _HEADING_RE.match(line):
            flush()
            continue
        line = re.sub(r"^(?:>\s?)+", "", line)
        if line.startswith("|"):
            flush()
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(re.fullmatch(r":?-*:?", c) for c in cells):
                units.append(_Unit("item", ", ".join(c for c in cells if c)))
            continue
        bullet = _BULLET_RE.match(line)
        if bullet:
            flush()
            units.append(_Unit("item", bullet.group(1)))
            continue
        if units and units[-1].kind == "item" and not current and raw[:1].isspace():
            units[-1].text += " " + line  # a list item's continuation line
            continue
        current.append(line)
    flush()
    out = []
    for unit in units:
        clean = unit.text if unit.kind == "code" else _inline_cleanup(unit.text)
        if clean:
            out.append(_Unit(unit.kind, clean))
    return out


def _split_sentences(unit: str) -> list[str]:
    out: list[str] = []
    for piece in SENTENCE_SPLIT_RE.split(unit):
        if out and out[-1].casefold().endswith(_ABBREVIATIONS):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [s.strip() for s in out if s.strip()]


def _whole(text: str, kind: str, *, first: bool, last: bool) -> bool:
    """Whether a sentence can be quoted on its own: not a chunk's cut-off start or end, not a question."""
    if text.endswith("?"):
        return False  # a question restates a problem; it never answers one
    if first and text[0].islower():
        return False  # the chunk starts mid-sentence
    if text.endswith((",", ";", "-", "—", "(")):
        return False  # dangling: the rest was cut off
    if _TERMINAL_RE.search(text):
        return True
    # A list item or table row needs no full stop, unless it is as long as a sentence (then it was cut off).
    return kind == "item" and not last and len(text.split()) <= ITEM_MAX_WORDS


def _sentences(docs: Sequence[Document]) -> list[_Sentence]:
    """The whole sentences of the passages. A sentence that ends in ":" introduces what follows it: it takes
    the code block or the list items right after it, and without them (cut off by the chunk) it is dropped."""
    sentences: list[_Sentence] = []
    for d, doc in enumerate(docs):
        position = 0
        intro: _Sentence | None = None  # the last sentence, while it still takes what it introduces
        units = _passage_units(doc.text)
        for u, unit in enumerate(units):
            if unit.kind == "code":
                if intro is not None and not intro.items:
                    intro.code = unit.text
                if u > 0 and units[u - 1].kind == "prose" and unit.text.count("\n") < EXAMPLE_MAX_LINES:
                    for sentence in sentences:
                        if sentence.doc == d and sentence.unit == u - 1:
                            sentence.example = unit.text
                intro = None
                position += 1
                continue
            if unit.kind == "item" and intro is not None and len(intro.items) < INTRO_MAX_ITEMS:
                intro.items.append(CITATION_RE.sub("", unit.text))
                position += 1
                continue
            intro = None
            pieces = _split_sentences(CITATION_RE.sub("", unit.text))
            for p, text in enumerate(pieces):
                first = u == 0 and p == 0
                last = u == len(units) - 1 and p == len(pieces) - 1
                if len(WORD_RE.findall(text.casefold())) >= 3 and _whole(
                    text, unit.kind, first=first, last=last
                ):
                    sentence = _Sentence(d, position, text, unit.kind, stems(text), unit=u)
                    sentences.append(sentence)
                    intro = sentence if text.endswith(":") and p == len(pieces) - 1 else None
                position += 1
    # An introduction whose continuation the chunk cut off says nothing on its own.
    return [s for s in sentences if not s.text.endswith(":") or s.code or s.items]


def _cite(sentence: str, index: str) -> str:
    if sentence[-1] in ".!?" and not sentence.endswith("..."):
        return f"{sentence[:-1]} [{index}]{sentence[-1]}"
    return f"{sentence} [{index}]"


def _index_key(index: str) -> tuple[int, str]:
    return (int(index), "") if index.isdigit() else (1 << 30, index)


def _idf(question_stems: list[str], stem_sets: list[set[str]]) -> dict[str, float]:
    n = len(stem_sets)
    idf: dict[str, float] = {}
    for stem in question_stems:
        df = sum(1 for words in stem_sets if stem in words)
        if df:
            idf[stem] = math.log(1 + n / df)
    return idf


def _render(docs: Sequence[Document], sentences: list[_Sentence], picked: list[int]) -> str:
    """Best passage first, reading order within each passage; citations, code blocks, then the sources."""
    doc_order = list(dict.fromkeys(sentences[i].doc for i in picked))
    ordered = sorted(picked, key=lambda i: (doc_order.index(sentences[i].doc), sentences[i].position))
    paragraphs: list[str] = []
    line: list[str] = []
    shown: set[tuple[int, int]] = set()
    for n, i in enumerate(ordered):
        s = sentences[i]
        line.append(_cite(s.text, docs[s.doc].index))
        later = any((sentences[j].doc, sentences[j].unit) == (s.doc, s.unit) for j in ordered[n + 1 :])
        if s.example and not s.code and not later and (s.doc, s.unit) not in shown:
            # The example that follows the paragraph shows the answer in code: quote it after the paragraph.
            shown.add((s.doc, s.unit))
            paragraphs += [" ".join(line), f"```\n{s.example}\n```"]
            line = []
        elif s.code:
            paragraphs += [" ".join(line), f"```\n{s.code}\n```"]
            line = []
        elif s.items:
            paragraphs += [" ".join(line), "\n".join(f"- {item}" for item in s.items)]
            line = []
    if line:
        paragraphs.append(" ".join(line))
    cited = sorted(
        {docs[sentences[i].doc].index: docs[sentences[i].doc] for i in ordered}.values(),
        key=lambda d: _index_key(d.index),
    )
    lines = [
        f"[{d.index}] {d.source} — {d.heading}" if d.heading else f"[{d.index}] {d.source}" for d in cited
    ]
    return "\n\n".join(paragraphs) + "\n\n" + SOURCES_HEADER + "\n" + "\n".join(lines)


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
    vectors = embedder.embed_documents([*queries, *texts])
    known = vectors[len(queries) :]
    rows = cosine_rows(vectors[: len(queries)], known)
    sims = rows[0] if not context else [(a + b) / 2 for a, b in zip(rows[0], rows[1], strict=True)]
    return sims, rows[len(queries) - len(parts) :]


_PART_SPLIT_RE = re.compile(
    r"(?i),?\s+and\s+(?=(?:what|how|which|where|when|why|who|is|are|does|do|can)\b)|(?<=\?)\s+|;\s+"
)


def question_parts(question: str) -> list[str]:
    """The questions a compound question asks ("How does X work, and what is the default Y?"), or []."""
    parts = [p.strip() for p in _PART_SPLIT_RE.split(question.strip()) if len(stems(p)) >= 2]
    return parts if len(parts) > 1 else []


@dataclass
class Judgement:
    """How well the passages can answer a question: their whole sentences, each one's similarity to the
    question (and to each part of a compound question), and the question's salient terms no passage names."""

    sentences: list[_Sentence]
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
    sentences = _sentences(docs)
    context = followup_context(question, earlier)
    parts = question_parts(question)
    sims, part_sims = _question_sims(embedder, question, [s.text for s in sentences], context, parts)
    absent = absent_terms(question, [f"{d.source} {d.heading} {d.text}" for d in docs])
    return Judgement(sentences, sims, absent, part_sims)


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

    question_stems = stems(question)
    stem_sets = [set(s.stems) for s in sentences]
    idf = _idf(question_stems, stem_sets)
    total = sum(idf.values()) or 1.0
    kind = question_kind(question)
    definition = _DEFINITION_QUESTION_RE.match(question.strip())
    defines = definition.group(1).strip().casefold() if definition else None
    headings = heading_similarities(verdict, docs, embedder, question)

    def score(i: int) -> float:
        lexical = sum(w for t, w in idf.items() if t in stem_sets[i]) / total
        s = sentences[i]
        cue = CUE_BONUS if (SOLUTION_RE.search(s.text) or s.code or s.example) else 0.0
        if kind == "how" and (SOLUTION_RE.search(s.text) or s.code or s.example or s.items):
            cue = TYPE_BONUS  # a how-to question: the instruction, the command, the code
        elif kind == "quantity" and _QUANTITY_RE.search(s.text):
            cue = TYPE_BONUS  # how long / how many: a number with its unit
        elif kind == "which" and (s.kind == "item" or "`" in s.text):
            cue = max(cue, TYPE_BONUS / 2)  # which setting / endpoint: a named one
        if defines is not None and re.match(
            rf"(?i)(?:the |a |an )?{re.escape(defines)}\b.{{0,40}}\b(?:is|are)\b", s.text
        ):
            cue = TYPE_BONUS  # "What is X?": the sentence that says "X is ..."
        return sims[i] + LEXICAL_WEIGHT * lexical + cue + HEADING_WEIGHT * headings[s.doc]

    scores = [score(i) for i in range(len(sentences))]
    order = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    picked: list[int] = []
    top = max(scores[i] for i in order if sims[i] >= ANSWER_MIN_SIMILARITY)
    for i in order:
        if len(picked) >= max_sentences or scores[i] < top - SUPPORTING_MARGIN:
            break
        if sims[i] < ANSWER_MIN_SIMILARITY or any(
            _near_duplicate(stem_sets[i], stem_sets[j]) for j in picked
        ):
            continue
        picked.append(i)
    # A how-to answer's sentences often restate the problem ("By default, X is not ..."), and the next sentence
    # or two of the same paragraph name the solution ("This can be changed by passing ..."): quote it too.
    if kind == "how" and not any(_names_solution(sentences[i]) for i in picked):
        follower = _solution_after(sentences, picked)
        if follower is not None:
            anchor, j = follower
            rest = [i for i in picked if i != anchor]
            picked = [anchor, j, *rest][:max_sentences]
    # A question that asks for a kind of answer (a how-to: code or an instruction; how long/how many: a number)
    # gets the best sentence of that kind too when none of the picked ones is, if it is nearly as good.
    wanted = _KIND_TESTS.get(kind)
    if wanted is not None and picked and not any(wanted(sentences[i]) for i in picked):
        for i in order:
            if scores[i] < top - KIND_MARGIN:
                break
            if sims[i] >= ANSWER_MIN_SIMILARITY and wanted(sentences[i]):
                if not any(_near_duplicate(stem_sets[i], stem_sets[j]) for j in picked):
                    picked = [*picked[: max_sentences - 1], i]
                break
    # A compound question gets each part's best sentence too, so the answer spans the passages it needs.
    for row in verdict.part_sims:
        best = max(range(len(sentences)), key=lambda i: (row[i], -i))
        if row[best] >= ANSWER_MIN_SIMILARITY and not any(
            _near_duplicate(stem_sets[best], stem_sets[j]) for j in picked
        ):
            picked.append(best)
    return _render(docs, sentences, picked) if picked else NO_ANSWER_TEXT


def _lexical_answer(question: str, docs: Sequence[Document], max_sentences: int) -> str:
    """Word-overlap ranking, for an engine built without an embedder."""
    question_stems = stems(question)
    sentences = _sentences(docs)
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
    return _render(docs, sentences, picked)


def document_sentences(docs: Sequence[Document]) -> list[str]:
    """The whole sentences of `docs` (what an answer may quote)."""
    return [s.text for s in _sentences(docs)]


def _near_duplicate(a: set[str], b: set[str]) -> bool:
    return bool(a and b) and len(a & b) / len(a | b) >= 0.6
