"""The nodes' retry policies: transient errors (tools.transient) are retried inside a node, others fail fast."""

from __future__ import annotations

from langgraph.types import RetryPolicy

from tools.transient import is_transient

# Model calls: a few quick retries with backoff for transient provider errors only.
MODEL_RETRY = RetryPolicy(
    initial_interval=0.5,
    backoff_factor=2.0,
    max_interval=8.0,
    max_attempts=3,
    jitter=True,
    retry_on=is_transient,
)
# Store reads: the pool recycles broken connections, so one retry rides over a dropped connection.
STORE_RETRY = RetryPolicy(
    initial_interval=0.2,
    backoff_factor=2.0,
    max_interval=2.0,
    max_attempts=3,
    jitter=True,
    retry_on=is_transient,
)
