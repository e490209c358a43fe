"""send_webhook: an outbound notification through a transactional outbox, delivered with its idempotency key.

The tool only inserts into `keel_outbox` (in the ledger's transaction: exactly once). A dispatcher loop
in the workers delivers pending rows to the configured URL with `Idempotency-Key`, retrying with backoff,
so the receiver can deduplicate a delivery that is retried after a crash.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from tools.ledger import Pool
from tools.registry import ToolContext, ToolRetry, ToolSpec

log = logging.getLogger("keel.outbox")


class WebhookInput(BaseModel):
    event: str = Field(..., min_length=1, max_length=100, description="Event name, e.g. 'ticket.escalated'")
    data: dict[str, Any] = Field(default_factory=dict, description="JSON payload")


class Queued(BaseModel):
    outbox_id: int
    idempotency_key: str


async def _send(args: WebhookInput, ctx: ToolContext) -> Queued:
    url = ctx.settings.get("webhook_url")
    if not url:
        raise ValueError("no webhook URL is configured (KEEL_WEBHOOK_URL)")
    cur = await ctx.conn.execute(
        "INSERT INTO keel_outbox (idempotency_key, url, payload) VALUES (%s, %s, %s) "
        "ON CONFLICT (idempotency_key) DO UPDATE SET url = keel_outbox.url RETURNING id",
        (ctx.idempotency_key, url, Jsonb({"event": args.event, "data": args.data, "user_id": ctx.user_id})),
    )
    return Queued(outbox_id=(await cur.fetchone())["id"], idempotency_key=ctx.idempotency_key)


SEND_WEBHOOK = ToolSpec(
    name="send_webhook",
    version="1",
    description="Notify the configured external system of an event.",
    input_model=WebhookInput,
    output_model=Queued,
    func=_send,
    side_effect="external",
    needs_approval=True,
    transactional=True,
    timeout_s=10.0,
    retry=ToolRetry(max_attempts=2),
)


async def dispatch_once(
    pool: Pool, client: httpx.AsyncClient, *, batch: int = 20, max_attempts: int = 8
) -> int:
    """Deliver due outbox rows; returns how many were delivered."""
    delivered = 0
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT id, idempotency_key, url, payload, attempts FROM keel_outbox WHERE status = 'pending' "
            "AND next_attempt_at <= now() ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
            (batch,),
        )
        rows = await cur.fetchall()
        for r in rows:
            try:
                resp = await client.post(
                    r["url"], json=r["payload"], headers={"Idempotency-Key": r["idempotency_key"]}
                )
                ok = resp.status_code < 300 or resp.status_code == 409
                err = None if ok else f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                ok, err = False, f"{type(exc).__name__}: {exc}"
            if ok:
                delivered += 1
                await conn.execute(
                    "UPDATE keel_outbox SET status = 'delivered', delivered_at = now(), "
                    "attempts = attempts + 1 WHERE id = %s",
                    (r["id"],),
                )
            else:
                dead = r["attempts"] + 1 >= max_attempts
                await conn.execute(
                    "UPDATE keel_outbox SET status = %s, attempts = attempts + 1, last_error = %s, "
                    "next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
                    ("dead" if dead else "pending", err, min(60.0, 0.5 * 2 ** r["attempts"]), r["id"]),
                )
    return delivered


async def dispatcher(pool: Pool, *, interval_s: float = 0.5, stop: asyncio.Event | None = None) -> None:
    """Deliver the outbox until stopped."""
    async with httpx.AsyncClient(timeout=10) as client:
        while stop is None or not stop.is_set():
            try:
                await dispatch_once(pool, client)
            except Exception:  # Postgres restarting: try again shortly
                log.warning("outbox dispatch failed", exc_info=True)
            await asyncio.sleep(interval_s)
