"""Many tables' rows in one round trip: ``COPY ... TO STDOUT`` statements sent as one
query and read through libpq's own calls (``psycopg.pq``).

``validate`` reads every ledger. On a new backend each ``SELECT`` of a ledger costs the
server more than its rows: the query is analysed and planned, which opens the table and
its primary key's index and builds their cache entries. ``COPY table TO STDOUT`` is
neither analysed nor planned and opens the table alone: 500 cold ledgers in about half
the server time (docs/performance.md, "Fifth round"). psycopg's ``Cursor.copy`` takes one
statement at a time, a round trip each, so the statements go as one simple query and
the replies are read here, the way libpq documents for asynchronous use: wait on the
socket (the GIL free, so that a second connection's thread runs), consume, take what
is complete.

A statement that fails (the table went away, row security, a partitioned table) makes
``copy_rows`` return ``None`` once the connection is ready again; the caller reads those
tables another way, which raises the server's error if it persists. Anything else that
goes wrong leaves the connection in the middle of a reply: the exception is raised and
the caller must close the connection.
"""

from __future__ import annotations

import csv
import selectors
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import pq


def copy_rows(
    conn: psycopg.Connection[Any], statements: Sequence[str]
) -> list[list[list[str]]] | None:
    """The rows of each of ``statements`` (each a ``COPY ... TO STDOUT (FORMAT csv)``), as
    lists of fields (a NULL reads as ""), in one round trip on ``conn``, an idle
    connection in autocommit mode (``None`` at once on any other); ``None`` if any of
    them failed."""
    pgconn = conn.pgconn
    if conn.info.transaction_status != pq.TransactionStatus.IDLE or pgconn.pipeline_status:
        return None  # in a transaction or a pipeline: not the state this reads from
    encoding = conn.info.encoding
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_READ)
        pgconn.send_query("; ".join(statements).encode(encoding))
        while pgconn.flush():  # the rest of the query once the socket takes it
            selector.modify(pgconn.socket, selectors.EVENT_READ | selectors.EVENT_WRITE)
            selector.select()
        selector.modify(pgconn.socket, selectors.EVENT_READ)
        tables: list[list[list[str]]] = []
        failed = False
        while (result := _next_result(pgconn, selector)) is not None:
            if result.status == pq.ExecStatus.COPY_OUT:
                lines = _copy_out(pgconn, selector)  # a row each, its newlines quoted
                tables.append(list(csv.reader(line.decode(encoding) for line in lines)))
            elif result.status != pq.ExecStatus.COMMAND_OK:
                failed = True  # the server skips the statements after it
    return None if failed or len(tables) != len(statements) else tables


def _next_result(pgconn: pq.abc.PGconn, selector: selectors.BaseSelector) -> pq.abc.PGresult | None:
    """The next complete result, or None when the query is done."""
    while pgconn.is_busy():
        selector.select()
        pgconn.consume_input()
    return pgconn.get_result()


def _copy_out(pgconn: pq.abc.PGconn, selector: selectors.BaseSelector) -> list[bytes]:
    """The data rows of the COPY under way, to its end."""
    lines: list[bytes] = []
    while True:
        size, data = pgconn.get_copy_data(1)
        if size > 0:
            lines.append(bytes(data))
        elif size == 0:  # nothing complete yet
            selector.select()
            pgconn.consume_input()
        elif size == -1:  # done; its command status follows as a result
            return lines
        else:
            raise psycopg.OperationalError("reading a COPY failed: " + pgconn.get_error_message())
