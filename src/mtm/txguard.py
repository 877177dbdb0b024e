"""Keeps a Python migration from ending the transaction of its step.

A transactional Python migration runs inside the transaction mtm opened for its step,
after the ledger row: ``op.execute("COMMIT")`` would commit that row with half a
migration and run the rest outside any transaction. While the migration runs, every
statement sent through its SQLAlchemy connection (``op.execute``, ``op.get_bind()``) is
parsed with PostgreSQL's grammar and one that begins, ends or prepares a transaction is
refused before it reaches the server, as are the connection's ``commit()`` and
``rollback()``. Statements sent on the driver connection underneath are not seen; the
runner checks the transaction status after the migration for those.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection

from . import sqlscript

# psycopg placeholders (%s, %(name)s, %b, %t) and the %% escape, which are not SQL.
_PLACEHOLDER = re.compile(r"%(\([^)]*\))?[sbt]|%%")


class TransactionControlRefused(Exception):
    """A transactional Python migration tried to begin, end or prepare a transaction."""


@contextmanager
def transaction_kept(conn: Connection) -> Iterator[None]:
    """Refuse transaction control through ``conn`` while the block runs.

    A refusal is raised where the statement was sent, and again when the block ends, so
    a migration that catches it still fails its step.
    """
    refused: list[TransactionControlRefused] = []
    savepoints = sqlscript.Savepoints()

    def refuse(what: str) -> None:
        exc = TransactionControlRefused(
            f"sent {what} inside mtm's transaction, which would record the "
            "migration with only part of it done; remove it, or give the migration "
            "'transactional = False' to manage transactions itself"
        )
        refused.append(exc)
        raise exc

    def before_cursor_execute(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool
    ) -> tuple[str, Any]:
        for found in _statements(statement):
            if savepoints.ends_transaction(found):
                refuse(repr(str(found)))
        return statement, parameters

    def on_commit(_conn: Any) -> None:
        refuse("commit()")

    def on_rollback(_conn: Any) -> None:
        refuse("rollback()")

    listeners: list[tuple[str, Any, dict[str, bool]]] = [
        ("before_cursor_execute", before_cursor_execute, {"retval": True}),
        ("commit", on_commit, {}),
        ("rollback", on_rollback, {}),
    ]
    for name, fn, options in listeners:
        event.listen(conn, name, fn, **options)
    try:
        yield
    finally:
        for name, fn, _ in listeners:
            event.remove(conn, name, fn)
        if refused:
            # A refused commit()/rollback() leaves SQLAlchemy's transaction marked
            # invalid; the step fails anyway, so roll back to make the connection usable.
            conn.rollback()
    if refused:
        raise refused[0]


def _statements(sql: str) -> list[sqlscript.Statement]:
    """The statements of ``sql`` as the driver will send it, or none if it does not
    parse (the server then rejects it too, or it is a single parameterised statement,
    which cannot hide a second one)."""
    for text in (sql, _PLACEHOLDER.sub(lambda m: "%" if m[0] == "%%" else "NULL", sql)):
        try:
            return sqlscript.split(text)
        except sqlscript.ScriptSyntaxError:
            continue
    return []
