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

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .config import Config
from .copyread import copy_rows
from .database import APART, checkout, driver
from .errors import made_by_another_tool
from .identifiers import quote_literal
from .ledger import FINGERPRINT_SQL, HAS_CHECKSUM, ledger_ref
from .plan import fingerprint

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


def ledger_tables(conn: Connection, config: Config, wanted: Iterable[str]) -> LedgerTables:
    """Every relation named like the ledger, in one query without a list of 10,000 names
    to match; refuses one of ``wanted`` that another tool made (no checksum column)."""
    rows = conn.execute(
        sa.text(
            f"SELECT n.nspname, c.relkind IN ('r', 'p'), {HAS_CHECKSUM} "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :t"
        ),
        {"t": config.migrations_table},
    ).all()
    want = set(wanted)
    foreign = [
        (ledger_ref(config, r[0]), "ledger") for r in rows if r[0] in want and r[1] and not r[2]
    ]
    if foreign:
        raise made_by_another_tool(foreign[:5], ["migrations_table"])
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


def _copied(conn: Connection, config: Config, chunk: Sequence[str]) -> dict[str, LedgerSum] | None:
    """The sums of ``chunk`` from its ledgers' rows, read by COPY; None if a COPY failed.
    A connection left in the middle of a reply (interrupted, lost) is closed."""
    statements = [
        f"COPY {ledger_ref(config, s)} (name, checksum) TO STDOUT (FORMAT csv)" for s in chunk
    ]
    try:
        tables = copy_rows(driver(conn), statements)
    except BaseException:
        conn.invalidate()
        raise
    return None if tables is None else {s: _summed(t) for s, t in zip(chunk, tables, strict=True)}


def _sums(
    conn: Connection, config: Config, chunks: Sequence[Sequence[str]]
) -> dict[str, LedgerSum]:
    out: dict[str, LedgerSum] = {}
    copy = not conn.info.get(APART, True)  # not on Citus (nor where it is not known)
    for chunk in chunks:
        copied = _copied(conn, config, chunk) if copy else None
        if copied is not None:
            out.update(copied)
            continue
        sql = _sums_sql(config, chunk).replace("%", "%%")  # the driver's own SQL
        for schema, rows, fp, ambiguous in conn.exec_driver_sql(sql).all():
            out[schema] = LedgerSum(int(rows), fp, bool(ambiguous))
    return out


def ledger_sums(
    engine: Engine, conn: Connection, config: Config, schemas: Sequence[str]
) -> dict[str, LedgerSum]:
    """The sum of each ledger in ``schemas`` (each must exist): half the batches on
    ``conn``, half on a second connection of ``engine`` when there is more than one."""
    chunks = [schemas[i : i + BATCH] for i in range(0, len(schemas), BATCH)]
    if len(chunks) < 2:
        return _sums(conn, config, chunks)

    def other_half() -> dict[str, LedgerSum]:
        with checkout(engine) as other:
            return _sums(other, config, chunks[1::2])

    with ThreadPoolExecutor(max_workers=1) as pool:
        second = pool.submit(other_half)
        out = _sums(conn, config, chunks[0::2])
        out.update(second.result())
    return out
