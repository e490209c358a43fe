"""Connection strings: point one at another database, describe one without its password."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def with_dbname(url: str, dbname: str) -> str:
    """The same connection settings pointing at another database."""
    return make_conninfo(url, dbname=dbname)


def describe(url: str) -> str:
    """A connection target without the password, for messages and logs."""
    d = conninfo_to_dict(url)
    host = d.get("host") or "localhost"
    return f"{d.get('user', '')}@{host}:{d.get('port', '5432')}/{d.get('dbname', '')}"
