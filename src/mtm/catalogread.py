"""The catalog fingerprints of a fleet read on several connections that see one moment.

``catalog.fingerprints`` is one statement, and PostgreSQL runs a statement on one core.
At thousands of schemas that statement is most of ``diff``'s time, and its work per
schema is independent: the schemas are split into chunks, one per connection, and the
chunks are read at once. Every connection reads in a REPEATABLE READ transaction that
imports the snapshot the first one exported (``SET TRANSACTION SNAPSHOT``), so the
chunks agree with each other and with what the first connection read before (steps,
ledgers) exactly as if one statement had read them all.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine

from . import catalog
from .database import checkout, rollback_quietly
from .identifiers import quote_literal
from .sqlrun import driver

# Fewer schemas than this in a chunk: the second connection costs more than it saves.
MIN_CHUNK = 400


@contextmanager
def snapshot(conn: Connection) -> Iterator[str]:
    """A read-only REPEATABLE READ transaction on ``conn``: every query inside sees one
    moment, whose id (for ``fingerprints``' other connections) is yielded."""
    conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        yield str(conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())
    finally:
        rollback_quietly(conn)


def chunks(schemas: Sequence[str], most: int) -> list[Sequence[str]]:
    """``schemas`` in at most ``most`` contiguous chunks of at least ``MIN_CHUNK`` each."""
    count = max(1, min(most, len(schemas) // MIN_CHUNK))
    if count == 1:
        return [schemas]
    size = -(-len(schemas) // count)
    return [schemas[i : i + size] for i in range(0, len(schemas), size)]


def fingerprints(
    engine: Engine,
    conn: Connection,
    moment: str,
    schemas: Sequence[str],
    *,
    exclude: Collection[str],
    connections: int,
) -> dict[str, str]:
    """``catalog.fingerprints`` of ``schemas`` as ``conn`` (inside ``snapshot``, whose id
    is ``moment``) sees them, the chunks after the first read on up to ``connections``
    - 1 more connections from ``engine`` at the same time."""
    first, *rest = chunks(schemas, connections)
    if not rest:
        return catalog.fingerprints(conn, first, exclude=exclude)
    with ThreadPoolExecutor(max_workers=len(rest), thread_name_prefix="mtm-diff") as pool:
        helpers: list[Connection] = []
        futures: list[Future[dict[str, str]]] = [
            pool.submit(_chunk, engine, moment, chunk, exclude, helpers) for chunk in rest
        ]
        try:
            out = catalog.fingerprints(conn, first, exclude=exclude)
            for future in futures:
                out.update(future.result())
        except BaseException:
            for helper in list(helpers):  # a failure or Ctrl-C: stop their queries too
                _cancel(helper)
            raise
    return out


def _chunk(
    engine: Engine,
    moment: str,
    schemas: Sequence[str],
    exclude: Collection[str],
    helpers: list[Connection],
) -> dict[str, str]:
    with checkout(engine) as conn:
        helpers.append(conn)
        conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT {quote_literal(moment)}")
            return catalog.fingerprints(conn, schemas, exclude=exclude)
        finally:
            rollback_quietly(conn)


def _cancel(conn: Connection) -> None:
    try:
        driver(conn).cancel()
    except Exception:  # already closed or never connected: nothing runs there
        pass
