"""Logging with run context: every record carries thread_id and run_id when a run is active."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

thread_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("thread_id", default=None)
run_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)


class RunContextFilter(logging.Filter):
    """Copy the run context into each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.thread_id = thread_id_var.get()
        record.run_id = run_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "thread_id": getattr(record, "thread_id", None),
            "run_id": getattr(record, "run_id", None),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines that still show the run context."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        tid, rid = getattr(record, "thread_id", None), getattr(record, "run_id", None)
        return f"{base} thread_id={tid} run_id={rid}" if (tid or rid) else base


def configure_logging(level: str = "INFO", json_logs: bool = False) -> None:
    """Install Keel's handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_keel", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._keel = True  # type: ignore[attr-defined]
    handler.addFilter(RunContextFilter())
    handler.setFormatter(
        JsonFormatter() if json_logs else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
