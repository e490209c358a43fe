"""The history summary: previous summary lines plus one line per folded turn (see agent/history)."""

from __future__ import annotations

import html
import re
from typing import Any

from agent.offline.messages import tagged
from agent.offline.text import CITATION_RE, SENTENCE_SPLIT_RE

SUMMARY_TAG = "conversation_to_summarize"

_SUMMARY_CLIP = 200


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _first_sentence(answer: str) -> str:
    answer = re.split(r"\s+Sources:", answer, maxsplit=1)[0]
    answer = CITATION_RE.sub("", answer).strip()
    return SENTENCE_SPLIT_RE.split(answer, maxsplit=1)[0] if answer else ""


def history_summary(request: str) -> str:
    """Merge `<previous_summary>` with one line per turn of `<conversation_to_summarize>` (see agent/history)."""
    previous = html.unescape(tagged(request, "previous_summary") or "")
    lines = [line.strip() for line in previous.splitlines() if line.strip() and line.strip() != "(none)"]
    turns: list[dict[str, Any]] = []
    for raw in html.unescape(tagged(request, SUMMARY_TAG) or "").splitlines():
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
