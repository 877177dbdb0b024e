"""One statement's rows on either kind of connection mtm holds: a psycopg connection, or
a SQLAlchemy one (whose statement goes to the psycopg connection under it as written).

Why: the read commands (``status``) run on a psycopg connection without importing
SQLAlchemy, whose import alone costs more than their queries (docs/performance.md,
"Sixth round"); every other command passes its SQLAlchemy connection to the same
functions. So the SQL given here is psycopg's: with ``params``, ``%(name)s`` for a
parameter and ``%%`` for a literal ``%``; without, every ``%`` is literal (the text is
sent as it is).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection

Conn: TypeAlias = "psycopg.Connection[Any] | SAConnection"

# What mtm notes about a psycopg connection it opened itself (a SQLAlchemy connection
# keeps its notes in its pool record's ``info``): whether its database has Citus.
_NOTES: weakref.WeakKeyDictionary[psycopg.Connection[Any], dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def rows(conn: Conn, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
    """Every row of one statement, fetched at once."""
    if params is None:  # SQLAlchemy passes parameters to psycopg even when there are none
        sql, params = sql.replace("%", "%%"), {}
    if isinstance(conn, psycopg.Connection):
        try:
            return conn.execute(sql, dict(params)).fetchall()
        except psycopg.Error as exc:
            exc.statement = sql  # type: ignore[attr-defined]  # as SQLAlchemy's errors say
            raise
    return list(conn.exec_driver_sql(sql, dict(params)).all())


def scalar(conn: Conn, sql: str, params: Mapping[str, Any] | None = None) -> Any:
    """The first column of the first row, None without a row."""
    found = rows(conn, sql, params)
    return found[0][0] if found else None


def driver(conn: Conn) -> psycopg.Connection[Any]:
    """The psycopg connection itself, or the one under a SQLAlchemy connection."""
    if isinstance(conn, psycopg.Connection):
        return conn
    dbapi = conn.connection.driver_connection
    assert isinstance(dbapi, psycopg.Connection)
    return dbapi


def discard(conn: Conn) -> None:
    """Close a connection left mid-protocol (interrupted, lost), so that no pool hands
    it out again as if it were idle."""
    if isinstance(conn, psycopg.Connection):
        conn.close()
    else:
        conn.invalidate()


def notes(conn: Conn) -> dict[str, Any]:
    """What mtm noted about this connection when it opened it (``database.APART``)."""
    if isinstance(conn, psycopg.Connection):
        return _NOTES.setdefault(conn, {})
    return conn.info
