"""The offline engine: a deterministic chat model that needs no LLM, no network and no API key.

It reads only the messages it is given (plus the tools bound to it), exactly as an LLM would, so the
graph cannot tell it from a real model: it calls tools, answers with citations, streams token by token
and grades drafts through `with_structured_output`. Same input, same output, every time.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool

NO_ANSWER_TEXT = "I could not find an answer to that in the knowledge base."
"""The whole answer when the retrieved documents do not contain one."""

TOOL_COMMAND = "/tool"
"""Prefix of the explicit tool-call command in a human message: `/tool NAME {json args}`."""

CRITIC_TOOL_NAME = "Critique"
"""Name of the critic's structured-output schema; forcing it switches the engine to grading."""

SOURCES_HEADER = "Sources:"
"""First line of the sources section that ends every extractive answer."""

_FORCING_CHOICES = {"any", "required"}
_NOT_FORCING_CHOICES = {"auto", "none"}

_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren as at be because been before being
    below between both but by can cannot could couldn d did didn do does doesn doing don done down during
    each eg either else etc few for from further get gets got had has hasn have haven having he her here
    hers him his how i ie if in into is isn it its itself just let ll m may me might more most much must
    my no nor not now of off on once only or other our ours out over own please re s same shall she should
    shouldn so some such t tell than that the their theirs them then there these they this those through
    to too under until up us use used uses using ve very via was wasn we were weren what when where
    whether which while who whom whose why will with within without won would wouldn you your yours
    explain describe
    """.split()
)

_WORD_RE = re.compile(r"[^\W_]+")
_DOCS_BLOCK_RE = re.compile(r"<retrieved_documents\b[^>]*>(.*?)</retrieved_documents>", re.S)
_DOC_RE = re.compile(r"<document\b([^>]*)>(.*?)</document>", re.S)
_ATTR_RE = re.compile(r'([\w-]+)\s*=\s*"([^"]*)"')
_TOOL_RE = re.compile(r"^\s*/tool(?![\w-])(?:[ \t]+(?P<name>[^\s{]+))?\s*(?P<args>.*)$", re.S)
_CITATION_RE = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_SOURCES_RE = re.compile(r"(?im)^[ \t]*[*_]*sources[*_]*[ \t]*:")
_HEADING_RE = re.compile(r"^#{1,6}\s+(.*?)\s*#*$")
_BULLET_RE = re.compile(r"^(?:[-*+]|\d+[.)])\s+(.*)$")
_RULE_RE = re.compile(r"^(?:-{3,}|\*{3,}|_{3,})$")
_FENCE_RE = re.compile(r"^(?:```|~~~)")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=\S)|(?<=[。！？])\s*(?=\S)")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "no.", "dr.", "mr.", "ms.")


# --------------------------------------------------------------------------------------- words


def _stem(word: str) -> str:
    """Crude suffix stripping, applied identically to questions, drafts and documents."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        base = word[: -len(suffix)]
        if word.endswith(suffix) and len(base) >= 3 and any(v in base for v in "aeiouy"):
            word = base
            if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def _terms(text: str) -> list[tuple[str, str]]:
    """(surface word, stem) of every content word, in order; stopwords and stray letters dropped."""
    out = []
    for word in _WORD_RE.findall(text.casefold()):
        if word in _STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        out.append((word, _stem(word)))
    return out


def _stems(text: str) -> list[str]:
    """Distinct content stems of `text`, in first-seen order."""
    return list(dict.fromkeys(stem for _, stem in _terms(text)))


# ------------------------------------------------------------------------------------ messages


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "\n".join(parts)


def _question_index(messages: Sequence[BaseMessage]) -> int | None:
    """Index of the last human message that says something besides a documents block."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.type == "human" and _DOCS_BLOCK_RE.sub("", _text(message)).strip():
            return i
    return None


@dataclass(frozen=True)
class _Document:
    index: str
    source: str
    heading: str
    text: str


def _parse_documents(text: str) -> list[_Document]:
    """The documents of the last <retrieved_documents> block in `text` (empty if none)."""
    blocks = _DOCS_BLOCK_RE.findall(text)
    if not blocks:
        return []
    docs = []
    for position, (attrs, body) in enumerate(_DOC_RE.findall(blocks[-1]), start=1):
        values = {k: html.unescape(v) for k, v in _ATTR_RE.findall(attrs)}
        docs.append(
            _Document(
                index=values.get("index") or str(position),
                source=values.get("source", ""),
                heading=values.get("heading", ""),
                text=html.unescape(body.strip("\n")),
            )
        )
    return docs


def _documents_in(messages: Sequence[BaseMessage]) -> list[_Document]:
    """Documents of the last message that carries a <retrieved_documents> block."""
    for message in reversed(messages):
        text = _text(message)
        if "<retrieved_documents" in text:
            return _parse_documents(text)
    return []


def _tag(text: str, name: str) -> str | None:
    start = text.find(f"<{name}>")
    end = text.rfind(f"</{name}>")
    if start < 0 or end < start:
        return None
    return text[start + len(name) + 2 : end].strip()


# ---------------------------------------------------------------------------- history summary

_SUMMARY_TAG = "conversation_to_summarize"
_SUMMARY_CLIP = 200


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _first_sentence(answer: str) -> str:
    answer = re.split(r"\s+Sources:", answer, maxsplit=1)[0]
    answer = _CITATION_RE.sub("", answer).strip()
    return _SENTENCE_SPLIT_RE.split(answer, maxsplit=1)[0] if answer else ""


def _history_summary(request: str) -> str:
    """Merge `<previous_summary>` with one line per turn of `<conversation_to_summarize>` (see agent/history)."""
    previous = html.unescape(_tag(request, "previous_summary") or "")
    lines = [line.strip() for line in previous.splitlines() if line.strip() and line.strip() != "(none)"]
    turns: list[dict[str, Any]] = []
    for raw in html.unescape(_tag(request, _SUMMARY_TAG) or "").splitlines():
        if raw.startswith("user: ") or not turns:
            turns.append({"asked": raw.removeprefix("user: "), "answered": "", "tools": []})
        elif raw.startswith("assistant called "):
            turns[-1]["tools"].append(raw.removeprefix("assistant called ").split(" ", 1)[0])
        elif raw.startswith("assistant: "):
            turns[-1]["answered"] = raw.removeprefix("assistant: ")  # the last reply is the turn's answer
    for turn in turns:
        line = f"- The user asked: {_clip(turn['asked'], _SUMMARY_CLIP)}"
        if turn["tools"]:
            line += f" Tools used: {', '.join(dict.fromkeys(turn['tools']))}."
        answer = _first_sentence(turn["answered"])
        if answer:
            line += f" Keel answered: {_clip(answer, _SUMMARY_CLIP)}"
        lines.append(line)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class _ToolCommand:
    name: str
    args: dict[str, Any] | None
    error: str | None


def _parse_tool_command(text: str) -> _ToolCommand | None:
    match = _TOOL_RE.match(text)
    if match is None:
        return None
    name, raw = match.group("name") or "", match.group("args").strip()
    usage = (
        f"Write `{TOOL_COMMAND} NAME {{json args}}`, where the arguments are one JSON object, "
        f'e.g. {TOOL_COMMAND} calculator {{"expression": "2 + 2"}}.'
    )
    if not name:
        return _ToolCommand("", None, f"The {TOOL_COMMAND} command needs a tool name. {usage}")
    if not raw:
        return _ToolCommand(name, {}, None)
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as exc:
        return _ToolCommand(
            name, None, f"Could not call '{name}': the arguments are not valid JSON ({exc}). {usage}"
        )
    if not isinstance(args, dict):
        kind = type(args).__name__
        return _ToolCommand(
            name, None, f"Could not call '{name}': the arguments must be a JSON object, got {kind}. {usage}"
        )
    return _ToolCommand(name, args, None)


def _tool_specs(tools: Any) -> list[dict[str, Any]]:
    """Bound tools as OpenAI function specs: [{"name", "description", "parameters"}]."""
    specs = []
    for tool in tools or []:
        converted = convert_to_openai_tool(tool)
        specs.append(converted.get("function", converted))
    return specs


def _forced_tool(specs: list[dict[str, Any]], tool_choice: Any) -> dict[str, Any] | None:
    """The tool spec that `tool_choice` forces, or None when the model may answer in text."""
    if tool_choice is None or tool_choice is False or not specs:
        return None
    name: Any = None
    if tool_choice is True:
        return specs[0]
    if isinstance(tool_choice, str):
        if tool_choice in _NOT_FORCING_CHOICES:
            return None
        if tool_choice in _FORCING_CHOICES:
            return specs[0]
        name = tool_choice
    elif isinstance(tool_choice, dict):
        kind = tool_choice.get("type")
        if kind in _NOT_FORCING_CHOICES:
            return None
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if name is None:
            return specs[0]
    for spec in specs:
        if spec.get("name") == name:
            return spec
    raise ValueError(
        f"tool_choice forces tool {name!r}, which is not bound; bound: {[s.get('name') for s in specs]}"
    )


def _call_id(name: str, args: dict[str, Any], n_messages: int) -> str:
    digest = hashlib.sha1((name + json.dumps(args, sort_keys=True) + str(n_messages)).encode()).hexdigest()
    return "call_" + digest[:16]


def _tool_result(message: BaseMessage) -> str:
    """The tool's output as text; a one-key JSON object such as {"result": 42} shows just its value."""
    content = message.content
    text = content if isinstance(content, str) else _text(message) or json.dumps(content, ensure_ascii=False)
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text.strip()
    if isinstance(value, dict) and len(value) == 1:
        (value,) = value.values()
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.strip()


def _summarise_tool_messages(messages: Sequence[BaseMessage], tool_messages: Sequence[BaseMessage]) -> str:
    names = {}
    for message in messages:
        for call in getattr(message, "tool_calls", None) or []:
            names[call.get("id")] = call.get("name")
    lines = []
    for message in tool_messages:
        name = message.name or names.get(getattr(message, "tool_call_id", None)) or "tool"
        result = _tool_result(message)
        verb = "failed" if getattr(message, "status", "success") == "error" else "returned"
        lines.append(f"{name} {verb}: {result}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ extraction


@dataclass
class _Sentence:
    doc: int
    position: int
    text: str
    stems: list[str] = field(default_factory=list)


def _inline_cleanup(text: str) -> str:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def _passage_units(text: str) -> list[str]:
    """Paragraphs and list items of a Markdown passage, without headings, fences or bullets."""
    units: list[str] = []
    current: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if current:
            units.append(" ".join(current))
            current.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if _FENCE_RE.match(line):
            if code is None:
                flush()
                code = []
            else:
                # A short snippet introduced by "...:" reads naturally inline; longer code is not prose.
                if units and units[-1].endswith(":") and 0 < len(code) <= 3:
                    units[-1] += " `" + "; ".join(code) + "`"
                code = None
            continue
        if code is not None:
            if line:
                code.append(line)
            continue
        if not line or _RULE_RE.match(line) or _HEADING_RE.match(line):
            flush()
            continue
        line = re.sub(r"^(?:>\s?)+", "", line)
        if line.startswith("|"):
            flush()
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(re.fullmatch(r":?-*:?", c) for c in cells):
                units.append(", ".join(c for c in cells if c))
            continue
        bullet = _BULLET_RE.match(line)
        if bullet:
            flush()
            line = bullet.group(1)
        current.append(line)
    flush()
    return [u for u in (_inline_cleanup(u) for u in units) if u]


def _split_sentences(unit: str) -> list[str]:
    out: list[str] = []
    for piece in _SENTENCE_SPLIT_RE.split(unit):
        if out and out[-1].casefold().endswith(_ABBREVIATIONS):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [s.strip() for s in out if s.strip()]


def _sentences(docs: Sequence[_Document]) -> list[_Sentence]:
    sentences = []
    for d, doc in enumerate(docs):
        position = 0
        for unit in _passage_units(doc.text):
            for text in _split_sentences(unit):
                if len(_WORD_RE.findall(text.casefold())) >= 3:
                    sentences.append(_Sentence(d, position, text, _stems(text)))
                position += 1
    return sentences


def _cite(sentence: str, index: str) -> str:
    if sentence[-1] in ".!?" and not sentence.endswith("..."):
        return f"{sentence[:-1]} [{index}]{sentence[-1]}"
    return f"{sentence} [{index}]"


def _index_key(index: str) -> tuple[int, str]:
    return (int(index), "") if index.isdigit() else (1 << 30, index)


def _extractive_answer(question: str, docs: Sequence[_Document], max_sentences: int) -> str:
    question_stems = _stems(question)
    sentences = _sentences(docs)
    if not question_stems or not sentences:
        return NO_ANSWER_TEXT
    n = len(sentences)
    stem_sets = [set(s.stems) for s in sentences]
    idf = {}
    for stem in question_stems:
        df = sum(1 for words in stem_sets if stem in words)
        if df:
            idf[stem] = math.log(1 + n / df)

    def score(i: int, covered: dict[str, None]) -> float:
        gain = sum(
            idf[t] * (0.3 if t in covered else 1.0) for t in question_stems if t in idf and t in stem_sets[i]
        )
        return gain / max(len(sentences[i].stems), 1) ** 0.25

    # Greedy: the best sentence, then sentences that add a missing question term or score nearly as well.
    picked: list[int] = []
    covered: dict[str, None] = {}
    top = 0.0
    while len(picked) < max_sentences:
        best, best_score = None, 0.0
        for i in range(n):
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

    # Best passage first, reading order within each passage.
    doc_order = list(dict.fromkeys(sentences[i].doc for i in picked))
    ordered = sorted(picked, key=lambda i: (doc_order.index(sentences[i].doc), sentences[i].position))
    body = " ".join(_cite(sentences[i].text, docs[sentences[i].doc].index) for i in ordered)
    cited = sorted(
        {docs[sentences[i].doc].index: docs[sentences[i].doc] for i in ordered}.values(),
        key=lambda d: _index_key(d.index),
    )
    lines = [
        f"[{d.index}] {d.source} — {d.heading}" if d.heading else f"[{d.index}] {d.source}" for d in cited
    ]
    return body + "\n\n" + SOURCES_HEADER + "\n" + "\n".join(lines)


def _near_duplicate(a: set[str], b: set[str]) -> bool:
    return bool(a and b) and len(a & b) / len(a | b) >= 0.6


# ---------------------------------------------------------------------------------- critic


def _strip_answer_decoration(draft: str) -> str:
    return _CITATION_RE.sub("", _SOURCES_RE.split(draft, maxsplit=1)[0])


def _critique(question: str, draft: str, docs: Sequence[_Document]) -> dict[str, Any]:
    command = _parse_tool_command(question)
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
        doc_stems.update(_stems(f"{doc.heading}\n{doc.text}"))

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
    for surface, stem in _terms(text):
        out.setdefault(stem, surface)
    return out


def _dedupe_casefold(words: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    for word in words:
        seen.setdefault(word.casefold(), word)
    return list(seen.values())


def _default_for(schema: dict[str, Any]) -> Any:
    """A value that satisfies simple JSON schemas: the default, else an empty value of the type."""
    if "default" in schema:
        return deepcopy(schema["default"])
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if options:
            if any(o.get("type") == "null" for o in options):
                return None
            return _default_for(options[0])
    kind = schema.get("type")
    if isinstance(kind, list):
        if "null" in kind:
            return None
        kind = kind[0] if kind else None
    if kind == "object":
        return {k: _default_for(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return []
    if kind == "string":
        return "-" * int(schema.get("minLength", 0))
    if kind in ("number", "integer"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return False
    return None


def _is_critic_schema(spec: dict[str, Any]) -> bool:
    properties = (spec.get("parameters") or {}).get("properties") or {}
    return str(spec.get("name", "")).casefold() == CRITIC_TOOL_NAME.casefold() or {
        "score",
        "revised_query",
    } <= set(properties)


# ----------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Reply:
    text: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model that answers from its prompt alone (no LLM, no network).

    Rules, decided only from the messages and the bound tools:

    - Forced tool (`tool_choice` "any"/"required"/a name/a dict, as `with_structured_output` does):
      if the tool is the critic's `Critique` schema (or has `score` and `revised_query` fields), grade
      the draft in the `<question>`/`<draft>` message against the `<retrieved_documents>` block:
      support = share of the draft's content words found in the documents, coverage = share of the
      question's content words found in the draft, score = 0.5*support + 0.5*coverage (0 for an empty
      or "no answer" draft), plus reasons and a revised query that leads with the missing words. A
      `/tool` question scores 1.0 when the draft reports that tool's outcome (retrieval cannot improve
      it), else 0.0. Any other forced tool gets the schema's defaults / empty values.
    - Tool command: when the last human message is `/tool NAME {json args}` (args optional, default
      `{}`, one JSON object, may span lines), nothing has answered it yet, and NAME is a bound tool,
      reply with one tool call `NAME(args)`. An unbound NAME or invalid JSON gets a text reply saying
      so, listing the available tools or the JSON error.
    - Tool results: when the conversation after the last human message ends with tool messages, reply
      with one line per result: "NAME returned: RESULT" or, for status "error", "NAME failed: ERROR".
    - History summary: when the last human message holds a `<conversation_to_summarize>` block (agent/history),
      reply with the `<previous_summary>` lines followed by one line per turn: "- The user asked: Q" with the
      tools it used and the first sentence of its answer, each clipped to 200 characters.
    - Otherwise, an extractive answer: the 1-3 sentences of the `<retrieved_documents>` passages that
      best match the question's content words, each cited as [index], then a "Sources:" section
      ("[i] source — heading"). With no matching sentence the answer is exactly `NO_ANSWER_TEXT`.

    Text streams word by word; a tool call streams as one chunk. `invoke` equals the joined stream.
    """

    model_name: str = "keel-offline"
    """Reported in traces; there is only one engine."""
    max_sentences: int = 3
    """Most sentences an extractive answer quotes."""

    @property
    def _llm_type(self) -> str:
        return "keel-offline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_sentences": self.max_sentences}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (any LangChain tool form) the way provider models do, as OpenAI tool specs."""
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], tool_choice=tool_choice, **kwargs)

    # -- the engine

    def _reply(self, messages: Sequence[BaseMessage], stop: list[str] | None = None, **kwargs: Any) -> _Reply:
        specs = _tool_specs(kwargs.get("tools"))
        forced = _forced_tool(specs, kwargs.get("tool_choice"))
        if forced is not None:
            args = self._structured_args(forced, messages)
            return _Reply(tool_calls=(self._tool_call(forced["name"], args, messages),))

        h = _question_index(messages)
        if h is None:
            return _Reply(text=_apply_stop(NO_ANSWER_TEXT, stop))
        if f"<{_SUMMARY_TAG}>" in _text(messages[h]):
            return _Reply(text=_apply_stop(_history_summary(_text(messages[h])), stop))
        question = _DOCS_BLOCK_RE.sub("", _text(messages[h])).strip()
        after = messages[h + 1 :]

        trailing = _trailing_tool_messages(after)
        if trailing:
            return _Reply(text=_apply_stop(_summarise_tool_messages(messages, trailing), stop))

        command = _parse_tool_command(question)
        if command is not None:
            if command.error:
                return _Reply(text=_apply_stop(command.error, stop))
            names = [str(s.get("name")) for s in specs]
            if command.name not in names:
                available = ", ".join(names) if names else "none"
                return _Reply(
                    text=_apply_stop(f"Unknown tool '{command.name}'. Available tools: {available}.", stop)
                )
            if not any(m.type == "ai" for m in after):
                return _Reply(tool_calls=(self._tool_call(command.name, command.args or {}, messages),))
            last_results = _last_tool_run(after)
            if last_results:
                return _Reply(text=_apply_stop(_summarise_tool_messages(messages, last_results), stop))

        answer = _extractive_answer(question, _documents_in(messages), self.max_sentences)
        return _Reply(text=_apply_stop(answer, stop))

    def _structured_args(self, spec: dict[str, Any], messages: Sequence[BaseMessage]) -> dict[str, Any]:
        parameters = spec.get("parameters") or {}
        if not _is_critic_schema(spec):
            return _default_for({**parameters, "type": "object"})
        question = draft = None
        docs: list[_Document] = []
        for message in reversed(messages):
            text = _text(message)
            if "<draft>" in text:
                question, draft = _tag(text, "question"), _tag(text, "draft")
                docs = _parse_documents(text)
                break
        if question is None:
            h = _question_index(messages)
            question = _DOCS_BLOCK_RE.sub("", _text(messages[h])).strip() if h is not None else ""
        if draft is None:
            ai = [m for m in messages if m.type == "ai" and not getattr(m, "tool_calls", None)]
            draft = _text(ai[-1]) if ai else ""
        if not docs:
            docs = _documents_in(messages)
        result = _critique(question, draft, docs)
        properties = parameters.get("properties") or {}
        if not properties:
            return result
        args = {k: v for k, v in result.items() if k in properties}
        for name, schema in properties.items():
            args.setdefault(name, _default_for(schema))
        return args

    @staticmethod
    def _tool_call(name: str, args: dict[str, Any], messages: Sequence[BaseMessage]) -> dict[str, Any]:
        return tool_call(name=name, args=args, id=_call_id(name, args, len(messages)))

    @staticmethod
    def _usage(messages: Sequence[BaseMessage], reply: _Reply) -> dict[str, int]:
        prompt = sum(len(_text(m).split()) for m in messages)
        out = len(reply.text.split()) + sum(len(json.dumps(c["args"]).split()) + 1 for c in reply.tool_calls)
        return {"input_tokens": prompt, "output_tokens": out, "total_tokens": prompt + out}

    # -- LangChain interface

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._reply(messages, stop=stop, **kwargs)
        message = AIMessage(
            content=reply.text,
            tool_calls=[dict(c) for c in reply.tool_calls],
            usage_metadata=self._usage(messages, reply),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._reply(messages, stop=stop, **kwargs)
        chunks: list[AIMessageChunk] = [AIMessageChunk(content=piece) for piece in _pieces(reply.text)]
        if reply.tool_calls:
            chunks.append(
                AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                        for i, c in enumerate(reply.tool_calls)
                    ],
                )
            )
        if not chunks:
            chunks.append(AIMessageChunk(content=""))
        last = chunks[-1]
        last.usage_metadata = self._usage(messages, reply)
        last.chunk_position = "last"
        for chunk in chunks:
            yield ChatGenerationChunk(message=chunk)


def _pieces(text: str) -> list[str]:
    """Words with their trailing whitespace; joined they give back `text` exactly."""
    return re.findall(r"\s+|\S+\s*", text) if text else []


def _apply_stop(text: str, stop: list[str] | None) -> str:
    for token in stop or []:
        if token and token in text:
            text = text[: text.index(token)]
    return text


def _trailing_tool_messages(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for message in reversed(messages):
        if message.type != "tool":
            break
        out.append(message)
    return out[::-1]


def _last_tool_run(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    for end in range(len(messages), 0, -1):
        if messages[end - 1].type == "tool":
            return _trailing_tool_messages(messages[:end])
    return []
