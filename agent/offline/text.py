"""Words: tokenising and stemming content words, the regexes that find citations and sentence ends."""

from __future__ import annotations

import re

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

WORD_RE = re.compile(r"[^\W_]+")

CITATION_RE = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")

SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=\S)|(?<=[。！？])\s*(?=\S)")


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


def terms(text: str) -> list[tuple[str, str]]:
    """(surface word, stem) of every content word, in order; stopwords and stray letters dropped."""
    out = []
    for word in WORD_RE.findall(text.casefold()):
        if word in _STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        out.append((word, _stem(word)))
    return out


def stems(text: str) -> list[str]:
    """Distinct content stems of `text`, in first-seen order."""
    return list(dict.fromkeys(stem for _, stem in terms(text)))


_REFERRING_RE = re.compile(
    r"(?i)^(?:and|or|but|what about|how about)\b|\b(?:it|its|they|them|their|this|these|those)\b"
)

FOLLOWUP_MAX_TERMS = 4
"""A question with at most this many content words leans on the conversation for its topic."""


def followup_context(question: str, earlier: str, *, strict: bool = False) -> str:
    """The earlier question when `question` is a follow-up that leans on it, else "".

    A question that refers back (a pronoun such as "its", or a leading "And"/"What about") is one; so, unless
    `strict`, is a short one ("How long does detection take?"). The first search of a turn is strict, since a
    short question may well stand alone ("How do I send traces?"); ranking blends both readings, and the
    critic's rewrite uses the loose rule once the question alone found nothing that answers it.
    """
    if not earlier.strip():
        return ""
    if _REFERRING_RE.search(question) or (not strict and len(stems(question)) <= FOLLOWUP_MAX_TERMS):
        return earlier
    return ""
