"""Readers: HTML pages as documentation generators write them (Sphinx), and PDFs with a title."""

from __future__ import annotations

from pathlib import Path

from memory.chunking import chunk_text, title_of
from memory.readers import html_to_text, pdf_to_text

SPHINX_PAGE = Path(__file__).parents[1] / "fixtures" / "sphinx_page.html"


def sphinx_text() -> str:
    return html_to_text(SPHINX_PAGE.read_text(encoding="utf-8"))


def test_sphinx_headings_have_no_permalink_glyphs():
    text = sphinx_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == ["# Lighthouse keeping", "## Cleaning the lens", "## Fog signals"]
    assert "¶" not in text and "🔗" not in text
    assert title_of(text, "fallback") == "Lighthouse keeping"
    assert [c.heading for c in chunk_text(text)] == [
        "Lighthouse keeping",
        "Lighthouse keeping > Cleaning the lens",
        "Lighthouse keeping > Fog signals",
    ]


def test_sphinx_page_furniture_is_dropped():
    text = sphinx_text()
    for stray in (
        "Navigation",  # the related bar
        "next",
        "Harbour Guide 2.1 documentation",
        "Table of Contents",  # the sidebar
        "Previous topic",
        "Quick search",
        "getElementById",  # scripts
        "Copyright",  # the footer
        "Created using",
    ):
        assert stray not in text, stray
    assert text.startswith("# Lighthouse keeping\n\nA lighthouse keeper tends the lamp from dusk to dawn.")
    # Words of one paragraph stay on one line; list items keep their bullet next to their words.
    assert "The keeper also records the weather in the log every four hours." in text
    assert "- Check the wick before sunset." in text and "- Refill the oil reservoir." in text


def test_html_pre_becomes_a_fenced_code_block():
    text = sphinx_text()
    assert "```\n$ lamp --clean --cloth=linen\nlens clean\n```" in text
    # The code block is a chunk boundary: no sentence is glued onto it.
    assert "the prisms.\n\n```" in text


def test_html_heading_glyphs_other_themes_and_csharp():
    html = (
        "<main><h2>🔗 Install</h2><p>Run it.</p>"
        '<h2>Usage<a class="anchor" aria-hidden="true" href="#usage">#</a></h2><p>Call it.</p>'
        '<h3>C#</h3><p>Works too.</p><h3>Setup <a href="#setup">¶</a></h3><p>Done.</p></main>'
    )
    lines = [line for line in html_to_text(html).splitlines() if line.startswith("#")]
    assert lines == ["## Install", "## Usage", "### C#", "### Setup"]


def test_html_article_header_is_content_site_header_is_not():
    html = (
        "<body><header class='site'><a href='/'>Acme docs home</a></header>"
        "<article><header><h1>Release notes</h1></header><p>Version 2 is out.</p></article>"
        "<aside>Sponsored</aside><footer>Acme Inc.</footer></body>"
    )
    assert html_to_text(html) == "# Release notes\n\nVersion 2 is out."


def pdf_with_title() -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", "B", 20)
    pdf.cell(0, 12, "Lighthouse Maintenance Guide", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "B", 14)
    pdf.cell(0, 10, "Lamp care", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", size=11)
    pdf.multi_cell(
        0,
        6,
        "The Fresnel lens must be cleaned every week with a soft cloth. Replace the bulb when it flickers, "
        "and log every replacement in the keeper's book so the next keeper knows its age.",
    )
    return bytes(pdf.output())


def test_pdf_title_is_separated_from_the_first_sentence():
    text = pdf_to_text(pdf_with_title())
    assert text.startswith(
        "# Lighthouse Maintenance Guide\n\n## Lamp care\n\nThe Fresnel lens must be cleaned"
    )
    assert title_of(text, "fallback") == "Lighthouse Maintenance Guide"
    chunks = chunk_text(text)
    body = [c for c in chunks if "Fresnel" in c.text]
    assert len(body) == 1 and body[0].heading == "Lighthouse Maintenance Guide > Lamp care"
    # The title and heading lines are paragraphs of their own: the paragraph (a sentence splitter's unit)
    # holding the first sentence starts with it, rather than reading "Lighthouse Maintenance Guide Lamp care
    # The Fresnel lens ...".
    (para,) = [p for p in body[0].text.split("\n\n") if "Fresnel" in p]
    assert para.startswith("The Fresnel lens must be cleaned every week")


def test_pdf_same_size_title_line_still_ends_at_a_boundary():
    from tests.support.documents import tiny_pdf

    text = pdf_to_text(tiny_pdf("Tide tables\nHigh water comes about fifty minutes later each day."))
    assert text == "# Tide tables\n\nHigh water comes about fifty minutes later each day."
    # A plain paragraph is left alone.
    plain = pdf_to_text(tiny_pdf("Tides follow the moon. High water comes later each day."))
    assert plain == "Tides follow the moon. High water comes later each day."
