"""Structured outputs the graph asks its models for."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Critique(BaseModel):
    """The critic's structured verdict on a draft: does it answer the question, from the documents?"""

    score: float = Field(
        ..., ge=0.0, le=1.0, description="0 = unsupported or off-topic, 1 = fully supported and complete"
    )
    answers_question: bool = Field(
        True, description="The draft answers the question asked (not a restatement, not a neighbouring topic)"
    )
    grounded: bool = Field(True, description="Every claim of the draft is stated in the cited documents")
    abstained: bool = Field(False, description="The draft says the documents do not contain the answer")
    missing: list[str] = Field(
        default_factory=list, description="What the question asks that the documents or the draft lack"
    )
    reasons: list[str] = Field(default_factory=list, description="Short reasons for the verdict")
    revised_query: str = Field(
        "", description="A different search query that would find the missing information (empty: none)"
    )
