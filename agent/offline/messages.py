"""Reading the prompt: a message's text, the question, the <retrieved_documents> block, tagged sections."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import BaseMessage

DOCS_BLOCK_RE = re.compile(r"<retrieved_documents\b[^>]*>(.*?)</retrieved_documents>", re.S)

_DOC_RE = re.compile(r"<document\b([^>]*)>(.*?)</document>", re.S)

_ATTR_RE = re.compile(r'([\w-]+)\s*=\s*"([^"]*)"')


def message_text(message: BaseMessage) -> str:
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


def question_index(messages: Sequence[BaseMessage]) -> int | None:
    """Index of the last human message that says something besides a documents block."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.type == "human" and DOCS_BLOCK_RE.sub("", message_text(message)).strip():
            return i
    return None


def earlier_question(messages: Sequence[BaseMessage], h: int | None) -> str:
    """The human question before message `h` (the conversation's previous turn), "" if there is none."""
    for i in range((h if h is not None else len(messages)) - 1, -1, -1):
        message = messages[i]
        if message.type != "human":
            continue
        text = DOCS_BLOCK_RE.sub("", message_text(message)).strip()
        if text and not text.startswith(("/tool", "<")):
            return text
    return ""


@dataclass(frozen=True)
class Document:
    index: str
    source: str
    heading: str
    text: str


def parse_documents(text: str) -> list[Document]:
    """The documents of the last <retrieved_documents> block in `text` (empty if none)."""
    blocks = DOCS_BLOCK_RE.findall(text)
    if not blocks:
        return []
    docs = []
    for position, (attrs, body) in enumerate(_DOC_RE.findall(blocks[-1]), start=1):
        values = {k: html.unescape(v) for k, v in _ATTR_RE.findall(attrs)}
        docs.append(
            Document(
                index=values.get("index") or str(position),
                source=values.get("source", ""),
                heading=values.get("heading", ""),
                text=html.unescape(body.strip("\n")),
            )
        )
    return docs


def documents_in(messages: Sequence[BaseMessage]) -> list[Document]:
    """Documents of the last message that carries a <retrieved_documents> block."""
    for message in reversed(messages):
        text = message_text(message)
        if "<retrieved_documents" in text:
            return parse_documents(text)
    return []


def tagged(text: str, name: str) -> str | None:
    start = text.find(f"<{name}>")
    end = text.rfind(f"</{name}>")
    if start < 0 or end < start:
        return None
    return text[start + len(name) + 2 : end].strip()
