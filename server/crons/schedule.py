"""Crons, pure: schedule and timezone checks, the next firing time, and a cron's stored payload as a run request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import ValidationError

from server.errors import ApiError
from server.schemas import RunCreate

# What a cron's payload may carry into each run it creates (the rest: schedule, timezone, end_time, enabled,
# on_run_completed, describe the cron itself).
RUN_FIELDS = (
    "assistant_id",
    "input",
    "config",
    "context",
    "metadata",
    "stream_mode",
    "stream_subgraphs",
    "stream_resumable",
    "interrupt_before",
    "interrupt_after",
    "multitask_strategy",
    "durability",
    "webhook",
)


def check_schedule(schedule: str) -> None:
    """A cron expression (croniter's grammar, as langgraph-api's) that fires at some point, or 422."""
    if not croniter.is_valid(schedule):
        raise ApiError(
            422,
            f"Invalid cron schedule: '{schedule}'. Reason: Invalid cron schedule. Ensure the schedule uses the "
            "standard cron format (minute hour day_of_month month day_of_week). "
            "Example: '*/5 * * * *' for every 5 minutes.",
        )
    try:
        next_fire(schedule, None, datetime.now(UTC))
    except Exception:  # croniter's CroniterBadDateError: a valid-looking date that never comes (Feb 30)
        raise ApiError(
            422, f"Invalid cron schedule: '{schedule}'. Reason: it never fires (no such date)."
        ) from None


def check_timezone(timezone: str | None) -> str | None:
    """An IANA timezone name (None is UTC), or 422."""
    if timezone is None:
        return None
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, KeyError, OSError):  # a directory name is an OSError
        raise ApiError(
            422, f"Invalid timezone: '{timezone}'. Use IANA timezone format (e.g. 'America/New_York')."
        ) from None
    return timezone


def next_fire(schedule: str, timezone: str | None, after: datetime) -> datetime:
    """The schedule's first tick strictly after `after`, in UTC (ticks are computed in the cron's timezone)."""
    base = after.astimezone(ZoneInfo(timezone)) if timezone else after.astimezone(UTC)
    nxt: datetime = croniter(schedule, base).get_next(datetime)
    return nxt.astimezone(UTC)


def run_request(payload: dict[str, Any], *, on_completion: str | None) -> RunCreate:
    """The run a cron's payload asks for, validated as `POST /runs` validates it (422 naming the field)."""
    fields = {k: payload[k] for k in RUN_FIELDS if k in payload}
    if on_completion is not None:
        fields["on_completion"] = on_completion
    try:
        return RunCreate.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise ApiError(422, f"{loc}: {err.get('msg', 'invalid value')}") from None
