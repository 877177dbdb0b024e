"""Restoring a tenant's dump under a new schema name, inside the caller's transaction.

``pg_restore`` restores into the schema named in the archive and only on a connection
of its own, which would leave a half-restored schema behind when an import fails. So
mtm runs ``pg_restore`` only to read the archive (``--file=-``: SQL text, no
connection), one section at a time, and sends that SQL itself, on its own connection,
in the import's one transaction:

* the pre-data and post-data sections (tables, sequences, functions; indexes,
  constraints, triggers) are made schema-neutral by ``baseline.neutralize`` and run with
  ``search_path`` set to the new schema;
* the data section is read line by line as it streams out of ``pg_restore``: each
  ``COPY ... FROM stdin`` block goes through psycopg's COPY untouched (rows are data,
  never rewritten), the sequence positions (``setval``) are neutralized like the DDL.

A failure anywhere rolls the whole transaction back: nothing restored remains, and a
killed import's transaction dies with its connection.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sqlalchemy.engine import Connection

from . import pgclient
from .baseline import neutralize
from .clustercheck import run_each
from .errors import MtmError
from .sqlrun import driver

SECTIONS = ("pre-data", "data", "post-data")
_END_OF_COPY = (b"\\.\n", b"\\.\r\n", b"\\.")


def section_sql(pg_restore: str, dump: Path, section: str) -> str:
    """One section of the archive as SQL text (``pg_restore`` connects to nothing)."""
    out = pgclient.run(
        [
            pg_restore,
            f"--section={section}",
            "--no-owner",
            "--no-privileges",
            "--file=-",
            str(dump),
        ],
        f"reading the {section} of {dump.name} with {pg_restore}",
    )
    return out.decode("utf-8")


def restore_ddl(conn: Connection, sql: str, schema: str) -> list[str]:
    """Run a DDL section of a dump of ``schema`` in the current transaction (whose
    search_path is the new schema); the neutralizer's warnings. One round trip, or one
    per statement on a Citus coordinator (``clustercheck.run_each``)."""
    neutral, warnings = neutralize(sql, schema)
    if neutral.strip():
        run_each(conn, neutral)
    return warnings


def restore_data(conn: Connection, pg_restore: str, dump: Path, schema: str) -> None:
    """Stream the data section of a dump of ``schema`` into the current transaction."""
    args = [pg_restore, "--section=data", "--no-owner", "--no-privileges", "--file=-", str(dump)]
    try:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise MtmError(f"could not run {pg_restore}: {exc}") from None
    assert process.stdout is not None and process.stderr is not None
    try:
        _apply_data(conn, iter(process.stdout), schema)
    finally:
        process.stdout.close()
        errors = _drain(process.stderr)
        code = process.wait()
    if code != 0:
        detail = errors[-1] if errors else f"exit code {code}"
        raise MtmError(f"reading the data of {dump.name} with {pg_restore} failed: {detail}")


def _drain(stream: IO[bytes]) -> list[str]:
    with stream:
        text = stream.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if line.strip()]


def _apply_data(conn: Connection, lines: Iterator[bytes], schema: str) -> None:
    """COPY blocks through COPY; what lies between them (``setval``) as neutral SQL."""
    between: list[bytes] = []
    for line in lines:
        if line.startswith(b"COPY ") and line.rstrip(b"\r\n").endswith(b" FROM stdin;"):
            _run_between(conn, between, schema)
            between = []
            statement, _ = neutralize(line.decode("utf-8"), schema)
            cursor = driver(conn).cursor()
            try:
                with cursor.copy(statement.strip().rstrip(";").encode("utf-8")) as copy:
                    for row in lines:
                        if row in _END_OF_COPY:
                            break
                        copy.write(row)
            finally:
                cursor.close()
        else:
            between.append(line)
    _run_between(conn, between, schema)


def _run_between(conn: Connection, lines: list[bytes], schema: str) -> None:
    if lines:
        restore_ddl(conn, b"".join(lines).decode("utf-8"), schema)
