"""Chunking properties: size bound, whole-sentence overlap, full coverage, verbatim text, headings, and chunk
boundaries at sentence / code block / heading boundaries."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory.chunking import Chunk, chunk_text, content_hash, title_of
from memory.embeddings import get_tokenizer

WORDS = (
    "queue worker postgres checkpoint replica vacuum unaffable tokenization naïve café, "
    "latency (p99) throughput; index-scan retry/backoff 42 3.14 über"
).split()


def prose(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(WORDS))
        if rng.random() < 0.08:
            lines.append(" ".join(line) + ".")
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines)


DOC = f"""Preamble before any heading. {prose(60, 1)}

# Operations

{prose(40, 2)}

## Scaling out

{prose(500, 3)}

```bash
# a comment, not a heading
keel worker --concurrency 4
```

### Workers

{prose(30, 4)}

## Backups
{prose(300, 5)}
"""


def spans(text: str, chunks: list[Chunk]) -> list[tuple[int, int]]:
    """Character span of each chunk, checked against its verbatim text."""
    offs = get_tokenizer().encode(text, add_special_tokens=False).offsets
    out = []
    for c in chunks:
        a, b = offs[c.start_token][0], offs[c.end_token - 1][1]
        assert text[a:b] == c.text  # verbatim source text, not detokenized
        out.append((a, b))
    return out


@pytest.mark.parametrize("max_tokens,overlap", [(200, 40), (50, 10), (16, 0), (8, 7), (1, 0)])
def test_size_bound_and_bounded_overlap(max_tokens, overlap):
    chunks = chunk_text(DOC, max_tokens=max_tokens, overlap=overlap)
    assert chunks and [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert 0 < c.end_token - c.start_token <= max_tokens
    spans(DOC, chunks)
    # Headings in DOC are unique, so "same heading" means "same section": consecutive chunks of a section
    # share at most `overlap` tokens (whole sentences, so possibly none), and a new section starts right
    # where the previous one ended.
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        if prev.heading == nxt.heading:
            assert 0 <= prev.end_token - nxt.start_token <= overlap
            assert nxt.start_token > prev.start_token and nxt.end_token > prev.end_token
        else:
            assert nxt.start_token == prev.end_token
    assert len([c for c in chunks if c.heading == "Operations > Scaling out"]) >= 2


def test_retokenized_chunk_fits_embedder():
    # Re-tokenising a chunk can differ slightly from its window (a word cut at the start), but it must
    # stay well inside the embedder's 256-token limit at the default size.
    tok = get_tokenizer()
    for c in chunk_text(DOC):
        assert len(tok.encode(c.text, add_special_tokens=False).ids) <= 200 + 8


@pytest.mark.parametrize("max_tokens,overlap", [(200, 40), (30, 8), (12, 0)])
def test_covers_all_text(max_tokens, overlap):
    chunks = chunk_text(DOC, max_tokens=max_tokens, overlap=overlap)
    # Every token of the document is in some chunk ...
    covered = set()
    for c in chunks:
        covered.update(range(c.start_token, c.end_token))
    n = len(get_tokenizer().encode(DOC, add_special_tokens=False).ids)
    assert covered == set(range(n))
    # ... and, with a non-trivial overlap, every whitespace-separated word appears whole in some chunk.
    if overlap >= 8:
        sp = spans(DOC, chunks)
        for m in re.finditer(r"\S+", DOC):
            assert any(a <= m.start() and m.end() <= b for a, b in sp), m.group()


def test_chunks_do_not_straddle_headings():
    chunks = chunk_text(DOC, max_tokens=50, overlap=10)
    for c in chunks:
        inner = c.text.split("\n")[1:]
        assert not any(re.match(r"#{1,6} ", line) for line in inner if not line.startswith("# a comment")), (
            c.text
        )


def test_headings_tracked():
    chunks = chunk_text(DOC, max_tokens=60, overlap=10)
    headings = [c.heading for c in chunks]
    assert headings[0] == ""
    assert chunks[0].text.startswith("Preamble")
    order = list(dict.fromkeys(headings))
    assert order == [
        "",
        "Operations",
        "Operations > Scaling out",
        "Operations > Scaling out > Workers",
        "Operations > Backups",
    ]
    # The fenced "# a comment" is code, not a heading: it stays in the Scaling out section.
    code = [c for c in chunks if "# a comment" in c.text]
    assert code and all(c.heading == "Operations > Scaling out" for c in code)
    first_backup = next(c for c in chunks if c.heading == "Operations > Backups")
    assert first_backup.text.startswith("## Backups")


def test_heading_only_section_folds_into_child():
    text = "# Guide\n\n## Ops\n### Scaling\nStart more workers.\n\n## Empty\n\n## Last\nBye."
    chunks = chunk_text(text, max_tokens=50, overlap=5)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Guide > Ops > Scaling", "# Guide\n\n## Ops\n### Scaling\nStart more workers."),
        ("Guide > Empty", "## Empty"),  # a sibling follows: kept, so no text is lost
        ("Guide > Last", "## Last\nBye."),
    ]


def test_short_text_single_chunk():
    chunks = chunk_text("Just one line.", max_tokens=200, overlap=40)
    assert chunks == [Chunk(text="Just one line.", index=0, start_token=0, end_token=4, heading="")]


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t"])
def test_empty(text):
    assert chunk_text(text) == []


@pytest.mark.parametrize("max_tokens,overlap", [(0, 0), (-5, 0), (10, 10), (10, 11), (10, -1)])
def test_bad_params(max_tokens, overlap):
    with pytest.raises(ValueError):
        chunk_text("some text", max_tokens=max_tokens, overlap=overlap)


def test_title_and_hash():
    assert title_of("intro\n## Sub\n# Real Title #\n", "fallback") == "Real Title"
    assert title_of("```\n# code\n```\nno heading", "fallback") == "fallback"
    assert content_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ---------------------------------------------------------------------------------------------------------
# Sentence-aware boundaries

VOCAB = (
    "the lamp keeper lens harbour fog horn signal tide worker queue lease checkpoint replica vacuum index "
    "postgres retries backoff latency throughput scales out restarts"
).split()

sentence = st.tuples(
    st.sampled_from(VOCAB),
    st.lists(st.sampled_from(VOCAB), min_size=1, max_size=14),
    st.sampled_from([".", "!", "?", ".)", '."']),
).map(lambda t: " ".join([t[0].capitalize(), *t[1]]) + t[2])
paragraphs = st.lists(st.lists(sentence, min_size=1, max_size=8), min_size=1, max_size=8)


def sentence_spans(paras: list[list[str]], seps: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The text of the paragraphs (sentences joined by the separators, paragraphs by a blank line) and the
    character span of every sentence."""
    text, found = "", []
    k = 0
    for p, sentences in enumerate(paras):
        if p:
            text += "\n\n"
        for i, sent in enumerate(sentences):
            if i:
                text += seps[k % len(seps)]
                k += 1
            found.append((len(text), len(text) + len(sent)))
            text += sent
    return text, found


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    paras=paragraphs,
    seps=st.lists(st.sampled_from([" ", "  ", "\n"]), min_size=1, max_size=4),
    max_tokens=st.integers(min_value=48, max_value=220),
    overlap_share=st.floats(min_value=0.0, max_value=0.5),
    heading=st.booleans(),
)
def test_chunks_start_and_end_at_sentence_boundaries(paras, seps, max_tokens, overlap_share, heading):
    text, sents = sentence_spans(paras, seps)
    if heading:
        text = "## Harbour rules\n\n" + text
        sents = [(0, len("## Harbour rules"))] + [(a + 18, b + 18) for a, b in sents]
    overlap = int(max_tokens * overlap_share)
    chunks = chunk_text(text, max_tokens=max_tokens, overlap=overlap)
    starts, ends = {a for a, _ in sents}, {b for _, b in sents}
    prev_end = 0
    for (a, b), c in zip(spans(text, chunks), chunks, strict=True):
        assert a in starts, (text[a : a + 40], c.text)
        assert b in ends, (text[b - 40 : b], c.text)
        assert c.end_token - c.start_token <= max_tokens
        assert not text[prev_end:a].strip()  # no gap: every sentence is in some chunk
        prev_end = b
    assert prev_end == len(text)


def test_overlap_is_whole_sentences():
    text = " ".join(f"Sentence number {n} talks about lamp {n} and its keeper." for n in range(40))
    chunks = chunk_text(text, max_tokens=60, overlap=25)
    assert len(chunks) > 3
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        shared = prev.end_token - nxt.start_token
        assert 0 < shared <= 25  # a sentence is ~13 tokens: one fits in the overlap
        assert nxt.text.startswith("Sentence number") and prev.text.endswith("keeper.")
        first = nxt.text.split(". ")[0] + "."
        assert nxt.text.startswith(prev.text[prev.text.index(first) :])


def test_code_block_kept_whole_when_it_fits():
    code = (
        "```python\n"
        + "\n".join(f"worker_{n} = start_worker(queue='q{n}', concurrency={n})" for n in range(6))
        + "\n```"
    )
    prose = " ".join(f"Workers pull runs from queue {n} until it drains." for n in range(12))
    text = f"# Scaling\n\n{prose}\n\n{code}\n\n{prose}"
    tok = get_tokenizer()
    assert len(tok.encode(code, add_special_tokens=False).ids) < 140
    chunks = chunk_text(text, max_tokens=140, overlap=20)
    holding = [c for c in chunks if "worker_0" in c.text or "worker_5" in c.text]
    assert len(holding) == 1 and code in holding[0].text
    for c in chunks:  # and a fence is never left open in a chunk
        assert c.text.count("```") % 2 == 0, c.text


def test_long_code_block_is_cut_at_line_ends():
    code = (
        "```\n" + "\n".join(f"step_{n} = run(step={n}, retries=3, backoff=0.5)" for n in range(40)) + "\n```"
    )
    chunks = chunk_text(code, max_tokens=50, overlap=10)
    assert len(chunks) > 2
    for c in chunks:
        assert c.end_token - c.start_token <= 50
        for line in c.text.splitlines():
            assert line in code.splitlines(), line  # whole lines only


def test_abbreviations_and_lowercase_do_not_end_sentences():
    text = "Use a broker, e.g. Postgres or Redis, for the queue. Then start workers. Dr. Smith agrees."
    chunks = chunk_text(text, max_tokens=12, overlap=0)
    assert [c.text for c in chunks][0].startswith("Use a broker, e.g. Postgres")
    assert all(not c.text.startswith(("Postgres", "Smith")) for c in chunks)


def test_table_rows_are_whole_units():
    rows = "\n".join(f"| step {n} | Done. Next one. | ok {n} |" for n in range(30))
    text = f"# Results\n\n| step | note | status |\n|---|---|---|\n{rows}\n"
    for c in chunk_text(text, max_tokens=60, overlap=15):
        for line in filter(None, c.text.splitlines()):
            assert line.startswith(("#", "|")) and (line.endswith("|") or line.startswith("#")), line
