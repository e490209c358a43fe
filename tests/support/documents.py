"""Sample documents for ingest tests."""

from __future__ import annotations


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF holding `text` (made with fpdf2, read back by Keel through pypdf)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())
