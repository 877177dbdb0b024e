"""Every ledger's fingerprint and row count, read on two connections at once.

``validate`` must read every ledger. At 10,000 tenants the cost is not the rows but the
server opening 10,000 tables on a new backend whose catalog caches are cold. So the
ledgers are read 100 a round trip as ``COPY ... TO STDOUT`` (``copyread``: no query to
analyse or plan, no index opened; about half the server's time of a ``SELECT``), their
fingerprints worked out here (``plan.fingerprint``, the MD5 the state summary holds),
and two backends share the tables. Where ``COPY`` fails for a batch (row security, a
partitioned ledger) and on Citus, the server computes each fingerprint instead, one row
per schema (the state summary's SQL). A ledger whose fingerprint is no prefix of the
files is then read row by row (``ledger.read_ledgers``) to name what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

from . import sqlrun
from .config import Config
from .copyread import copy_rows
from .database import APART
from .identifiers import quote_literal
from .ledger import FINGERPRINT_SQL, existing_ledgers, ledger_ref
from .plan import fingerprint
from .sqlrun import Conn

# Opens a second connection to the same database, closed when its block ends.
Another = Callable[[], AbstractContextManager[Conn]]

BATCH = 100  # ledgers a query (see ``read_ledgers``: a UNION ALL plans slower when long)
EMPTY = fingerprint([])  # the fingerprint of a ledger with no rows, or of no ledger


@dataclass(frozen=True)
class LedgerSum:
    """What the server says of one ledger without sending its rows."""

    rows: int
    fingerprint: str
    # A name or checksum holds ':' or ',', the separators of the fingerprint's text: two
    # different ledgers could then share a text (and so a fingerprint), so this one is
    # read row by row whatever its fingerprint.
    ambiguous: bool


NO_LEDGER = LedgerSum(0, EMPTY, False)


@dataclass(frozen=True)
class LedgerTables:
    """The tables named like a ledger in the database: ``ledgers`` are mtm's (a table
    with a checksum column), by schema; ``named`` every schema with a relation of that
    name, a table or not."""

    ledgers: frozenset[str]
    named: frozenset[str]


def ledger_tables(conn: Conn, config: Config) -> LedgerTables:
    """Every relation named like the ledger, in one query without a list of 10,000 names
    to match. Whether each is mtm's (it has a checksum column) is asked only of those
    ``ledger_sums`` cannot read by COPY: asked of all, it cost more than the rest of the
    query (an index probe per relation; 55-125 ms at 10,000 tenants)."""
    rows = sqlrun.rows(
        conn,
        "SELECT n.nspname, c.relkind IN ('r', 'p') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = %(t)s",
        {"t": config.migrations_table},
    )
    return LedgerTables(
        ledgers=frozenset(r[0] for r in rows if r[1]), named=frozenset(r[0] for r in rows)
    )


def _sums_sql(config: Config, schemas: Sequence[str]) -> str:
    return " UNION ALL ".join(
        f"SELECT {quote_literal(s)}, count(*), {FINGERPRINT_SQL}, "
        "coalesce(bool_or(name || coalesce(checksum, '') ~ '[:,]'), false) "
        f"FROM {ledger_ref(config, s)}"
        for s in schemas
    )


def _summed(rows: Sequence[Sequence[str]]) -> LedgerSum:
    """What the server's SQL says of a ledger (``_sums_sql``), from its rows."""
    pairs = [(name, checksum) for name, checksum in rows]
    ambiguous = any(c in name + checksum for name, checksum in pairs for c in ":,")
    return LedgerSum(len(pairs), fingerprint(pairs), ambiguous)


def _copied(conn: Conn, config: Config, chunk: Sequence[str]) -> dict[str, LedgerSum] | None:
    """The sums of ``chunk`` from its ledgers' rows, read by COPY; None if a COPY failed.
    A connection left in the middle of a reply (interrupted, lost) is closed."""
    statements = [
        f"COPY {ledger_ref(config, s)} (name, checksum) TO STDOUT (FORMAT csv)" for s in chunk
    ]
    try:
        tables = copy_rows(sqlrun.driver(conn), statements)
    except BaseException:
        sqlrun.discard(conn)
        raise
    return None if tables is None else {s: _summed(t) for s, t in zip(chunk, tables, strict=True)}


Chunks = Sequence[Sequence[str]]
T = TypeVar("T")


def _copied_sums(
    conn: Conn, config: Config, chunks: Chunks
) -> tuple[dict[str, LedgerSum], list[Sequence[str]]]:
    """The sums of the chunks COPY could read, and the chunks it could not."""
    out: dict[str, LedgerSum] = {}
    missed: list[Sequence[str]] = []
    for chunk in chunks:
        copied = _copied(conn, config, chunk)
        if copied is None:
            missed.append(chunk)
        else:
            out.update(copied)
    return out, missed


def _computed_sums(conn: Conn, config: Config, chunks: Chunks) -> dict[str, LedgerSum]:
    """The sums the server computes (the state summary's SQL), a query per chunk."""
    out: dict[str, LedgerSum] = {}
    for chunk in chunks:
        for schema, rows, fp, ambiguous in sqlrun.rows(conn, _sums_sql(config, chunk)):
            out[schema] = LedgerSum(int(rows), fp, bool(ambiguous))
    return out


def _halves(
    another: Another, conn: Conn, chunks: Chunks, read: Callable[[Conn, Chunks], T]
) -> list[T]:
    """``read`` of half the chunks on ``conn`` and of the other half on a second
    connection (``another``), at once (one ``read`` of them all when there is one)."""
    if len(chunks) < 2:
        return [read(conn, chunks)]

    def other_half() -> T:
        with another() as other:
            return read(other, chunks[1::2])

    with ThreadPoolExecutor(max_workers=1) as pool:
        second = pool.submit(other_half)
        first = read(conn, chunks[0::2])
        return [first, second.result()]


def ledger_sums(
    another: Another, conn: Conn, config: Config, schemas: Sequence[str]
) -> dict[str, LedgerSum]:
    """The sum of each ledger in ``schemas`` (each must exist), 100 a round trip on two
    connections: read by COPY; where that fails, and on Citus, computed by the server,
    once the tables of those batches were checked to be mtm's ledgers (another tool's
    is refused: COPY of it fails on its missing checksum column)."""
    chunks = [schemas[i : i + BATCH] for i in range(0, len(schemas), BATCH)]
    out: dict[str, LedgerSum] = {}
    left: list[Sequence[str]] = list(chunks)
    if not sqlrun.notes(conn).get(APART, True):  # not on Citus (nor where it is not known)
        left = []
        for sums, missed in _halves(another, conn, chunks, lambda c, p: _copied_sums(c, config, p)):
            out.update(sums)
            left += missed
    if left:
        existing_ledgers(conn, config, [s for chunk in left for s in chunk])  # refuses
        for sums in _halves(another, conn, left, lambda c, p: _computed_sums(c, config, p)):
            out.update(sums)
    return out
