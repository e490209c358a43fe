"""What a question asks for (a how-to, a quantity, a named setting, a definition), its parts when it is
compound, and which sentences give that kind of answer."""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.offline.sentences import CONCRETE_RE, Sentence
from agent.offline.text import stems

SOLUTION_RE = re.compile(
    r"(?i)^(?:to [^,]{3,80}, )?(?:run|set|use|start|add|call|pass|install|configure|create|send|point|give|put|"
    r"enable|disable|scale|deploy|ingest|open|write|choose|pick|increase|raise|lower|export|mount|restart|stop|"
    r"resume|register|keep|make|mark|attach|replace|delete|remove|list|ask|tell|select|return|raise|check)\b"
    r"|\byou can\b|\ball you (?:have|need) to do\b|\bby (?:setting|running|passing|adding|starting|calling)\b|`[A-Z][A-Z0-9_]{2,}`|`keel [a-z]"
)


DEFINITION_QUESTION_RE = re.compile(r"(?i)^what (?:is|are) (?:the |a |an )?([^?]{2,60}?)\s*\??$")
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

QUANTITY_RE = re.compile(
    r"(?i)\b\d[\d,.]*(?:\s*(?:-|to|and)\s*\d[\d,.]*)?[\s-]*(?:%|ms|s\b|sec|second|minute|min\b|hour|day|week|"
    r"month|year|byte|[kmg]i?b\b|kb|mb|gb|token|dimension|dims?\b|time|run|worker|process|passage|char|row|line|"
    r"request|retr|attempt|connection|item|entr|event|vector|step|thread|percent|x\b)"
    r"|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|twice|half)\s+(?:second|minute|hour|day|time|"
    r"worker|process|run|step|passage|attempt)"
)
"""A number with its unit ("5 to 7 seconds", "384-dimensional", "twice k")."""


PARAMETER_LINE_RE = re.compile(r"^\*{0,2}[A-Za-z_][\w.]*\s+\([^)]{1,80}\)\s+[–—-]\s")
"""A Sphinx API field-list line: a parameter, its type, then what it is ("abort (bool) – if this is set to True a
negative answer aborts ..."). It restates a parameter's own description, not what happens or how to do something."""

_PARAMETER_QUESTION_RE = re.compile(
    r"(?i)\b(?:parameters?|arguments?|accepts?|takes?|kwargs?|signature)\b|^(?:and |so )?what does \S+ do\b"
)


def asks_for_parameters(question: str) -> bool:
    """A question a parameter line answers: which parameter/option, what an API accepts or takes."""
    return question_kind(question) == "which" or _PARAMETER_QUESTION_RE.search(question) is not None


KIND_TESTS: dict[str, Callable[[Sentence], bool]] = {
    "how": lambda s: bool(s.code or s.example),
    "quantity": lambda s: QUANTITY_RE.search(s.text) is not None,
}
"""For a question of that kind: whether a sentence gives the kind of answer it asks for."""


def names_solution(s: Sentence) -> bool:
    return bool(SOLUTION_RE.search(s.text) or s.code or s.example)


def names_concrete(s: Sentence) -> bool:
    """Whether a sentence names something the reader can type or run (see `CONCRETE_RE`), or shows code."""
    return bool(s.code or s.example or CONCRETE_RE.search(s.text))


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


_PART_SPLIT_RE = re.compile(
    r"(?i),?\s+and\s+(?=(?:what|how|which|where|when|why|who|is|are|does|do|can)\b)|(?<=\?)\s+|;\s+"
)


def question_parts(question: str) -> list[str]:
    """The questions a compound question asks ("How does X work, and what is the default Y?"), or []."""
    parts = [p.strip() for p in _PART_SPLIT_RE.split(question.strip()) if len(stems(p)) >= 2]
    return parts if len(parts) > 1 else []
