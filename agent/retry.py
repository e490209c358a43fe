"""The nodes' retry policies: transient errors (tools.transient) are retried inside a node, others fail fast."""

from __future__ import annotations

from langgraph.types import RetryPolicy

from tools.transient import is_transient


def _transient_retry(initial_interval: float, max_interval: float) -> RetryPolicy:
    """Three attempts with jittered exponential backoff, for transient errors only."""
    return RetryPolicy(
        initial_interval=initial_interval,
        backoff_factor=2.0,
        max_interval=max_interval,
        max_attempts=3,
        jitter=True,
        retry_on=is_transient,
    )


# Model calls: a few quick retries with backoff for transient provider errors only.
MODEL_RETRY = _transient_retry(initial_interval=0.5, max_interval=8.0)
# Store reads: the pool recycles broken connections, so one retry rides over a dropped connection.
STORE_RETRY = _transient_retry(initial_interval=0.2, max_interval=2.0)
