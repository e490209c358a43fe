"""Turn documents into text: Markdown and plain text as they are, HTML through the standard library's
parser (headings become Markdown headings, so chunks keep their heading path; page furniture such as
navigation, sidebars, footers and permalink anchors is dropped; <pre> becomes a fenced code block), PDF
through pypdf (title and heading lines, told apart by font size, become Markdown headings)."""

from __future__ import annotations

import io
import re
from collections import Counter
from html.parser import HTMLParser
from typing import Any

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
DEFAULT_INCLUDE = ("*.md", "*.markdown", "*.txt", "*.html", "*.htm", "*.pdf")

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Permalink marks that documentation generators put next to headings (Sphinx, MkDocs, Docusaurus, ...).
_GLYPHS = "¶§🔗\uf0c1#"


class _HtmlText(HTMLParser):
    # Never content: scripts and styles, and page furniture (site navigation, headers, footers, sidebars, forms).
    _SKIP = {
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "head",
        "nav",
        "footer",
        "aside",
        "form",
        "button",
        "select",
        "iframe",
        "dialog",
    }
    # Elements (by class, id or role) that documentation themes use for the same furniture: Sphinx's related
    # bar, sidebar and footer, the permalink anchor next to every heading, MkDocs, Read the Docs, Furo and
    # the PyData theme's navigation.
    _SKIP_CLASSES = {
        "headerlink",
        "anchorjs-link",
        "hash-link",
        "related",
        "sphinxsidebar",
        "sphinxsidebarwrapper",
        "footer",
        "searchbox",
        "clearer",
        "md-header",
        "md-footer",
        "md-sidebar",
        "md-nav",
        "md-source",
        "wy-nav-side",
        "wy-breadcrumbs",
        "rst-versions",
        "rst-footer-buttons",
        "sidebar-drawer",
        "toc-drawer",
        "related-pages",
        "bd-header",
        "bd-footer",
        "bd-sidebar",
        "bd-sidebar-primary",
        "bd-sidebar-secondary",
        "prev-next-area",
        "skip-link",
        "navbar",
        "breadcrumbs",
    }
    _SKIP_IDS = {"searchbox", "sidebar", "ethical-ad-placement", "navbar", "footer"}
    _SKIP_ROLES = {"navigation", "search", "banner", "contentinfo", "complementary"}
    _BLOCK = {
        "p",
        "div",
        "section",
        "article",
        "li",
        "tr",
        "br",
        "blockquote",
        "table",
        "ul",
        "ol",
        "main",
        "dl",
        "dt",
        "dd",
        "figure",
        "figcaption",
        "caption",
        "hr",
        "header",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[tuple[str, str]] = []  # (kind, text): "text", "heading" or "code"
        self.title = ""
        self._in_title = False
        self._skip_tag = ""  # the element being skipped, and how deeply it is nested in itself
        self._skip_depth = 0
        self._content = 0  # inside <main>/<article>: a <header> there is the page's own, not the site's
        self._heading: list[str] | None = None
        self._pre: list[str] | None = None
        self._pre_depth = 0
        self._bullet = False  # a list item started: its "- " goes before its first words

    def _skipped(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if tag in self._SKIP or (tag == "header" and not self._content):
            return True
        a = {k: (v or "") for k, v in attrs}
        if "hidden" in a or a.get("aria-hidden") == "true" or "display: none" in a.get("style", ""):
            return True
        classes = set(a.get("class", "").split())
        return bool(
            classes & self._SKIP_CLASSES or a.get("id") in self._SKIP_IDS or a.get("role") in self._SKIP_ROLES
        )

    def _emit(self, kind: str, text: str) -> None:
        if self._heading is not None and kind == "text":
            self._heading.append(text)
        elif self._pre is not None and kind == "text":
            self._pre.append(text)
        else:
            self.parts.append((kind, text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_depth:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        if tag == "title":
            self._in_title = True
        if tag not in _VOID and self._skipped(tag, attrs):
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in ("main", "article") or dict(attrs).get("role") == "main":
            self._content += 1
        if tag == "pre":
            if self._pre is None:
                self._pre = []
            self._pre_depth += 1
        elif tag in _HEADINGS and self._pre is None:
            self._heading = []
            self._heading_level = int(tag[1])
        elif tag in ("td", "th"):
            self._emit("text", " ")
        elif tag == "li":
            self._emit("text", "\n")
            self._bullet = True
        elif tag in self._BLOCK and not self._bullet:
            self._emit("text", "\n\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skip_depth:
            if tag == self._skip_tag:
                self._skip_depth -= 1
            return
        if tag == "title":
            self._in_title = False
        if tag in ("main", "article") and self._content:
            self._content -= 1
        if tag == "pre" and self._pre is not None:
            self._pre_depth -= 1
            if not self._pre_depth:
                code, self._pre = "".join(self._pre), None
                self.parts.append(("code", code))
        elif tag in _HEADINGS and self._heading is not None:
            text, self._heading = _heading_text("".join(self._heading)), None
            if text:
                self.parts.append(("heading", "#" * self._heading_level + " " + text))
        elif tag in self._BLOCK and self._pre is None and not self._bullet:
            self._emit("text", "\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip_depth:
            if self._pre is None:
                data = re.sub(r"\s+", " ", data)  # only block elements break lines outside <pre>
            if self._bullet and data.strip() and self._heading is None and self._pre is None:
                data, self._bullet = "\n- " + data.lstrip(), False
            self._emit("text", data)


def _heading_text(raw: str) -> str:
    """A heading's text on one line, without the permalink marks themes add at either end ("C#" is kept)."""
    text = " ".join(raw.split())
    while True:
        before = text
        if text and text[-1] in _GLYPHS and (text[-1] != "#" or len(text) == 1 or text[-2] == " "):
            text = text[:-1].rstrip()
        if text and text[0] in _GLYPHS and (len(text) == 1 or text[1] == " "):
            text = text[1:].lstrip()
        if text == before:
            return text


def _fence(code: str) -> str:
    """A fenced code block holding `code` verbatim (a longer fence when the code contains one)."""
    code = "\n".join(line.rstrip() for line in code.strip("\n").splitlines())
    fence = "```"
    while fence in code:
        fence += "`"
    return f"{fence}\n{code}\n{fence}"


def html_to_text(html: str) -> str:
    """Readable text of an HTML page: headings as Markdown headings, <pre> blocks as fenced code."""
    p = _HtmlText()
    p.feed(html)
    p.close()
    blocks: list[str] = []
    buf: list[str] = []

    def flush() -> None:
        lines = [" ".join(line.split()) for line in "".join(buf).splitlines()]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        if text:
            blocks.append(text)
        buf.clear()

    for kind, text in p.parts:
        if kind == "text":
            buf.append(text)
            continue
        flush()
        if kind == "heading":
            blocks.append(text)
        elif text.strip():
            blocks.append(_fence(text))
    flush()
    text = "\n\n".join(blocks)
    title = _heading_text(p.title)
    if title and not text.startswith("# "):
        text = f"# {title}\n\n{text}" if text else f"# {title}"
    return text


_SENTENCE_END = re.compile(r"[.!?:;,]['\")\]]*$")


def _font_size(cm: Any, tm: Any, size: float) -> float:
    """The rendered height of text drawn at font size `size` under the two matrices (vertical scale)."""
    try:
        return abs(float(size) * float(tm[3] or tm[0]) * float(cm[3] or cm[0] or 1))
    except (TypeError, IndexError):
        return abs(float(size))


def pdf_to_text(data: bytes) -> str:
    """Text of every page of a PDF given as bytes (pages separated by blank lines).

    pypdf puts a title on the line just above the first paragraph, so it would read as the paragraph's
    first words. Lines set in a larger font than the body text become Markdown headings (the largest size
    "#", the next "##", ...); with no size difference, a short first line without final punctuation is
    taken as the title. Either way the heading ends at a paragraph boundary.
    """
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    sizes: dict[str, float] = {}
    weights: Counter[float] = Counter()
    pages: list[str] = []
    for page in reader.pages:
        pieces: list[tuple[str, float]] = []

        def visit(
            text: str, cm: Any, tm: Any, font: Any, size: float, out: list[tuple[str, float]] = pieces
        ) -> None:
            if text:
                out.append((text, round(_font_size(cm, tm, size), 1)))

        text = (page.extract_text(visitor_text=visit) or "").strip()
        line, biggest = "", 0.0
        for piece, size in [*pieces, ("\n", 0.0)]:
            for i, part in enumerate(piece.split("\n")):
                if i:  # a line ended
                    key = " ".join(line.split())
                    if key:
                        sizes[key] = max(sizes.get(key, 0.0), biggest)
                    line, biggest = "", 0.0
                if part.strip():
                    line += part
                    biggest = max(biggest, size)
                    weights[size] += len(part.strip())
        if text:
            pages.append(text)
    if not pages:
        return ""
    body = weights.most_common(1)[0][0] if weights else 0.0
    heading_sizes = sorted({s for s in sizes.values() if body and s >= body * 1.15}, reverse=True)
    level = {s: min(i + 1, 6) for i, s in enumerate(heading_sizes)}

    out: list[str] = []
    for n, page_text in enumerate(pages):
        lines = page_text.splitlines()
        kept: list[str] = []
        for i, raw in enumerate(lines):
            line = " ".join(raw.split())
            size = sizes.get(line, body)
            short = 0 < len(line.split()) <= 15 and not _SENTENCE_END.search(line)
            if short and size in level:
                kept += ["", "#" * level[size] + " " + line, ""]
            elif (
                short
                and n == 0
                and not heading_sizes
                and not any(k.strip() for k in kept)
                and i + 1 < len(lines)
            ):
                kept += ["# " + line, ""]  # no font information: a short first line is the title
            else:
                kept.append(raw)
        out.append(re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip())
    return "\n\n".join(out)
