"""Structured outputs the graph asks its models for."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Critique(BaseModel):
    """The critic's structured verdict on a draft."""

    score: float = Field(
        ..., ge=0.0, le=1.0, description="0 = unsupported or off-topic, 1 = fully supported and complete"
    )
    reasons: list[str] = Field(default_factory=list, description="Short reasons for the score")
    revised_query: str = Field("", description="A better search query when the score is low")
