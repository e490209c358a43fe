"""Tickets: a real table in Keel's Postgres. Creating one needs approval and can be undone (saga)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.registry import ToolContext, ToolSpec


class Ticket(BaseModel):
    id: int
    title: str
    body: str
    status: str
    owner: str


class CreateTicketInput(BaseModel):
    title: str = Field(..., min_length=1, max_length=200, description="One-line summary")
    body: str = Field("", max_length=5000, description="Details")


class ListTicketsInput(BaseModel):
    status: Literal["open", "closed", "cancelled", "all"] = Field("open", description="Which tickets")
    limit: int = Field(20, ge=1, le=100)


class TicketList(BaseModel):
    tickets: list[Ticket]


class CloseTicketInput(BaseModel):
    ticket_id: int = Field(..., ge=1, description="The ticket to close")


_COLS = "id, title, body, status, owner"


async def _create(args: CreateTicketInput, ctx: ToolContext) -> Ticket:
    # Transactional: this insert commits together with the ledger's "succeeded" mark.
    cur = await ctx.conn.execute(
        f"INSERT INTO keel_tickets (owner, title, body, idempotency_key) VALUES (%s, %s, %s, %s) "
        f"ON CONFLICT (idempotency_key) DO UPDATE SET title = keel_tickets.title RETURNING {_COLS}",
        (ctx.user_id, args.title, args.body, ctx.idempotency_key),
    )
    return Ticket(**await cur.fetchone())


async def _reconcile_create(args: CreateTicketInput, ctx: ToolContext) -> Ticket | None:
    async with ctx.pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_COLS} FROM keel_tickets WHERE idempotency_key = %s", (ctx.idempotency_key,)
        )
        row = await cur.fetchone()
    return Ticket(**row) if row else None


async def _undo_create(args: CreateTicketInput, result: dict[str, Any], ctx: ToolContext) -> None:
    await ctx.conn.execute(
        "UPDATE keel_tickets SET status = 'cancelled', closed_at = now() WHERE id = %s", (result["id"],)
    )


async def _list(args: ListTicketsInput, ctx: ToolContext) -> TicketList:
    if ctx.pool is None:
        return TicketList(tickets=[])
    where, params = "owner = %s", [ctx.user_id]
    if args.status != "all":
        where += " AND status = %s"
        params.append(args.status)
    async with ctx.pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_COLS} FROM keel_tickets WHERE {where} ORDER BY id DESC LIMIT %s", [*params, args.limit]
        )
        return TicketList(tickets=[Ticket(**r) for r in await cur.fetchall()])


async def _close(args: CloseTicketInput, ctx: ToolContext) -> Ticket:
    cur = await ctx.conn.execute(
        f"UPDATE keel_tickets SET status = 'closed', closed_at = now() WHERE id = %s AND owner = %s "
        f"AND status = 'open' RETURNING {_COLS}",
        (args.ticket_id, ctx.user_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise ValueError(f"no open ticket {args.ticket_id} of yours")
    return Ticket(**row)


async def _undo_close(args: CloseTicketInput, result: dict[str, Any], ctx: ToolContext) -> None:
    await ctx.conn.execute(
        "UPDATE keel_tickets SET status = 'open', closed_at = NULL WHERE id = %s AND status = 'closed'",
        (result["id"],),
    )


CREATE_TICKET = ToolSpec(
    name="create_ticket",
    version="1",
    description="Open a support ticket on the user's behalf.",
    input_model=CreateTicketInput,
    output_model=Ticket,
    func=_create,
    side_effect="write",
    needs_approval=True,
    transactional=True,
    reconcile=_reconcile_create,
    compensator=_undo_create,
    timeout_s=10.0,
)
LIST_TICKETS = ToolSpec(
    name="list_tickets",
    version="1",
    description="List the user's tickets.",
    input_model=ListTicketsInput,
    output_model=TicketList,
    func=_list,
    side_effect="read",
    timeout_s=10.0,
)
CLOSE_TICKET = ToolSpec(
    name="close_ticket",
    version="1",
    description="Close one of the user's open tickets.",
    input_model=CloseTicketInput,
    output_model=Ticket,
    func=_close,
    side_effect="write",
    needs_approval=True,
    transactional=True,
    compensator=_undo_close,
    timeout_s=10.0,
)
