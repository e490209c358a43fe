"""`keel`: serve, worker, ingest, search, ask, db, memory, reindex, prune, mcp, tools (one module per job)."""

from server.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
