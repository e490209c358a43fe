"""Chunking properties: size bound, exact overlap, full coverage, verbatim text, headings."""

from __future__ import annotations

import random
import re

import pytest

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
def test_size_bound_and_exact_overlap(max_tokens, overlap):
    chunks = chunk_text(DOC, max_tokens=max_tokens, overlap=overlap)
    assert chunks and [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert 0 < c.end_token - c.start_token <= max_tokens
    spans(DOC, chunks)
    # Headings in DOC are unique, so "same heading" means "same section": windows overlap exactly,
    # and a new section starts right where the previous one ended.
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        if prev.heading == nxt.heading:
            assert prev.end_token - nxt.start_token == overlap
        else:
            assert nxt.start_token == prev.end_token
    scaling = [c for c in chunks if c.heading == "Operations > Scaling out"]
    assert len(scaling) >= 2
    for prev, nxt in zip(scaling, scaling[1:], strict=False):
        assert prev.end_token - nxt.start_token == overlap


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
