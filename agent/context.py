"""Run-scoped settings, read by nodes through `Runtime[Context]`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Context:
    """Everything a run may tune without changing the graph."""

    user_id: str = "local"
    """The authenticated caller; memories and policies are scoped to it."""
    roles: list[str] = field(default_factory=list)
    """The caller's roles (from authentication), for tool policies."""
    tenant: str | None = None
    """The caller's tenant (from authentication), for tool policies."""
    model: str | None = None
    """provider:model for the answering model; None = the offline engine."""
    critic_model: str | None = None
    """provider:model for the critic; None = same as `model`."""
    namespace: str = "default"
    """Document corpus to retrieve from."""
    retrieve_k: int = 4
    """How many passages to retrieve per query."""
    critic_threshold: float = 0.7
    """Drafts scoring below this are revised while revisions remain."""
    max_revisions: int = 2
    """Quality retries (critique -> retrieve) per turn."""
    max_steps: int = 24
    """Node executions per turn."""
    max_tool_calls: int = 8
    """Tool executions per turn."""
    recall_k: int = 2
    """How many of the user's long-term memories to recall into each turn (0 = none)."""
    recall_min_score: float = 0.35
    """Similarity a memory needs to be recalled."""
    history_tokens: int = 3000
    """Budget (approximate tokens) for earlier turns sent to the model; older turns are dropped whole."""
    history: str = "summarize"
    """Earlier turns over `history_tokens`: "summarize" folds the oldest into a running summary and removes them
    from the thread's messages (bounded checkpoints); "trim" keeps every message and only leaves them out of the
    prompt."""
    summary_tokens: int = 600
    """Budget (approximate tokens) of that running summary; its oldest lines are dropped beyond it."""
    tools: list[str] | None = field(default=None)
    """Tool allowlist; None = every registered tool."""
