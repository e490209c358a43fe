"""The audit trail: every decision and execution, with who, what (argument hash) and the outcome."""

from __future__ import annotations

import logging

from tools.ledger import Pool

log = logging.getLogger("keel.audit")


async def record(
    pool: Pool | None,
    *,
    user_id: str,
    tool: str,
    version: str | None,
    args_hash: str | None,
    decision: str,
    outcome: str | None = None,
    thread_id: str | None = None,
    run_id: str | None = None,
    detail: str | None = None,
) -> None:
    """Append one audit row (best effort logging if there is no database, e.g. under `langgraph dev`)."""
    log.info("tool %s %s: %s%s", tool, decision, outcome or "", f" ({detail})" if detail else "")
    if pool is None:
        return
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO keel_tool_audit (user_id, thread_id, run_id, tool, version, args_hash, decision, outcome, "
            "detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (user_id, thread_id, run_id, tool, version, args_hash, decision, outcome, (detail or "")[:1000]),
        )
