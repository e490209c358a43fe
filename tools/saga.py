"""Sagas: when a run fails for good or is rolled back, undo its completed effects in reverse order.

Each compensation runs exactly once per effect: for transactional compensators the undo and the
ledger's "compensated" mark commit together; a worker that dies part-way leaves the remaining effects
marked as not compensated, and the next attempt continues from there.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from tools import audit, ledger
from tools.registry import ToolContext, ToolRegistry

log = logging.getLogger("keel.saga")


async def compensate_run(registry: ToolRegistry, ctx: ToolContext, run_id: str) -> int:
    """Run the compensators of the run's succeeded effects, newest first; returns how many ran."""
    ran = 0
    for row in await ledger.effects_to_compensate(ctx.pool, run_id):
        spec = registry.get(row["tool"])
        key = row["key"]
        if spec is None or spec.compensator is None:
            async with ctx.pool.connection() as conn:
                await ledger.mark_compensated(conn, key)
            continue
        args = spec.input_model.model_validate(row["args"])
        cctx = replace(ctx, idempotency_key=f"{key}:compensate")
        async with ctx.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT compensation FROM keel_tool_ledger WHERE key = %s FOR UPDATE", (key,)
            )
            if (await cur.fetchone())["compensation"] == "done":
                continue
            await spec.compensator(args, row["result"], replace(cctx, conn=conn))
            await ledger.mark_compensated(conn, key)
        ran += 1
        await audit.record(
            ctx.pool,
            user_id=ctx.user_id,
            tool=spec.name,
            version=spec.version,
            args_hash=None,
            decision="compensate",
            outcome="compensated",
            thread_id=ctx.thread_id,
            run_id=run_id,
            detail=f"key {key}",
        )
        log.info("compensated %s (%s)", spec.name, key)
    return ran
