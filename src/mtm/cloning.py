"""Cloning a tenant: which migrations rebuild its step, and copying its rows.

A clone is a create (``creation.create_tenant``) that applies the source's applied
migrations (in the order its ledger applied them, not up to head), and, with its rows,
copies them in the same transaction, which a clone opens ``REPEATABLE READ`` so that
every table is read from one snapshot of the source:

* tables in foreign-key order, referenced tables first (``INSERT ... SELECT`` of the
  columns both have, generated columns left out: they compute themselves; ``OVERRIDING
  SYSTEM VALUE`` for identity ``ALWAYS`` columns; a column of a type of the source's
  schema, such as an enum, cast through its text form to the clone's own type);
* foreign keys that form a cycle between tables are made ``DEFERRABLE INITIALLY
  DEFERRED`` for the copy, checked (``SET CONSTRAINTS ... IMMEDIATE``) once every table
  is in, and set back as they were, all before the commit: it needs no superuser
  (``session_replication_role`` would) and no nullable column (inserting NULLs, then
  updating, would); a table referring to itself needs nothing, since PostgreSQL checks
  a foreign key at the end of the statement;
* the clone's own triggers do not fire (rows are copied as they are: an audit trigger
  would log them twice, a ``BEFORE INSERT`` one rewrite them);
* sequences take the source's state, and one owned by a column is set past the
  largest copied value of that column, so the next insert gets a fresh id;
* materialized views the source has populated are refreshed from the copied rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from .adoption import retired_ledger
from .config import Config
from .errors import TenantError
from .identifiers import quote_ident, quote_literal
from .ledger import AppliedMigration
from .migrations import Migration, MigrationSet
from .plan import legacy_problems
from .sqlrun import driver


def replay(source: str, ledger: Sequence[AppliedMigration], mset: MigrationSet) -> list[Migration]:
    """The migrations that rebuild ``source``'s step, in the order it applied them;
    refused if one's file is missing or has changed since (the clone would differ).
    An adopted row of a ``.js`` file reads back with the checksum "" its file has: it is
    recorded as superseded again and the baseline after it runs, as in a create."""
    out: list[Migration] = []
    for row in ledger:
        m = mset.find("tenant", row.name)
        if m is None:
            raise TenantError(
                f"tenant {source!r} cannot be cloned: its migration {row.name} has no file "
                "any more, so its step cannot be rebuilt (restore the file)"
            )
        if not row.checksum and not m.legacy:  # a ledger reads NULL back as ""
            raise TenantError(
                f"tenant {source!r} cannot be cloned: its migration {row.name} was recorded "
                "without a checksum, so nothing says its file built it"
            )
        if m.checksum != row.checksum:
            raise TenantError(
                f"tenant {source!r} cannot be cloned: its migration {row.name} was applied "
                f"from a file that has changed since ({m.path}); restore the file as it "
                "was, or 'mtm validate' to see every such file"
            )
        out.append(m)
    for problem in legacy_problems(source, out):  # create would refuse the same list
        raise TenantError(f"tenant {source!r} cannot be cloned: {problem}")
    return out


class CloneMismatch(Exception):
    """The source's tables and the clone's disagree (the source was changed by hand)."""


@dataclass(frozen=True)
class _Column:
    name: str
    type: str  # as format_type shows it (qualified when outside the search_path)
    identity: str  # '', 'a' (ALWAYS) or 'd' (BY DEFAULT)
    generated: str  # '' or 's' / 'v'


@dataclass(frozen=True)
class _Key:
    name: str
    table: str  # the referencing table (a partition's root)
    references: str
    deferrable: bool
    deferred: bool


def _rows(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return driver(conn).execute(sql.encode("utf-8"), params).fetchall()


_TABLES = (
    "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
    "AND c.relname NOT IN (%s, %s) ORDER BY c.relname"
)
_COLUMNS = (
    "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity, "
    "a.attgenerated FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
    "AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)
_KEYS = (
    "SELECT k.conname, r.relname, f.relname, k.condeferrable, k.condeferred "
    "FROM pg_constraint k "
    "JOIN pg_class r ON r.oid = coalesce(pg_partition_root(k.conrelid), k.conrelid) "
    "JOIN pg_class f ON f.oid = coalesce(pg_partition_root(k.confrelid), k.confrelid) "
    "JOIN pg_namespace rn ON rn.oid = r.relnamespace "
    "JOIN pg_namespace fn ON fn.oid = f.relnamespace "
    "WHERE k.contype = 'f' AND k.conparentid = 0 AND rn.nspname = %s AND fn.nspname = %s "
    "ORDER BY r.relname, k.conname"
)
_TRIGGERS = (
    "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
    "AND NOT t.tgisinternal AND t.tgenabled = 'O' AND t.tgparentid = 0 "
    "ORDER BY c.relname, t.tgname"
)
# Sequences with the column that owns them, if any, and whether it counts up.
_SEQUENCES = (
    "SELECT s.relname, t.relname, a.attname, q.seqincrement > 0 "
    "AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) "
    "FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace "
    "JOIN pg_sequence q ON q.seqrelid = s.oid "
    "LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid "
    "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
    "LEFT JOIN pg_class t ON t.oid = d.refobjid "
    "LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
    "WHERE n.nspname = %s AND s.relkind = 'S' ORDER BY s.relname"
)
_MATVIEWS = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relkind = 'm' AND c.relispopulated ORDER BY c.oid"
)


def _columns(conn: Connection, schema: str) -> dict[str, list[_Column]]:
    out: dict[str, list[_Column]] = {}
    for table, name, type_, identity, generated in _rows(conn, _COLUMNS, [schema]):
        out.setdefault(table, []).append(_Column(name, type_, identity, generated))
    return out


def copy_rows(conn: Connection, config: Config, source: str, target: str) -> dict[str, int]:
    """Copy every row of ``source``'s tables into ``target`` at the same step, inside the
    caller's transaction (search_path: ``target``); the rows copied per table. Its
    phases, in order: cycles deferred, triggers off, rows, keys checked and set back,
    triggers on, sequences, materialized views."""
    kinds = dict(_rows(conn, _TABLES, [source, config.migrations_table, retired_ledger(config)]))
    tables = list(kinds)
    theirs, ours = _columns(conn, source), _columns(conn, target)
    keys = [_Key(*r) for r in _rows(conn, _KEYS, [target, target])]
    order, cyclic = _order(tables, keys)
    qs, qt = quote_ident(source), quote_ident(target)
    for key in cyclic:
        if not key.deferrable:
            _run(
                conn,
                f"ALTER TABLE {qt}.{quote_ident(key.table)} ALTER CONSTRAINT "
                f"{quote_ident(key.name)} DEFERRABLE INITIALLY DEFERRED",
            )
        _run(conn, f"SET CONSTRAINTS {qt}.{quote_ident(key.name)} DEFERRED")
    triggers = _rows(conn, _TRIGGERS, [target])
    for table, name in triggers:
        _run(conn, f"ALTER TABLE {qt}.{quote_ident(table)} DISABLE TRIGGER {quote_ident(name)}")
    counts: dict[str, int] = {}
    for table in order:
        # ONLY: an inheritance child is copied as a table of its own; a partitioned
        # table is read whole (its partitions are not in ``tables``).
        only = "ONLY " if kinds[table] == "r" else ""
        rows = _copy_table(conn, f"{only}{qs}", qt, table, theirs.get(table, []), ours.get(table))
        counts[table] = rows
    # Every deferred check now (a deferrable key outside a cycle too): ALTER TABLE
    # refuses a table with checks still pending.
    _run(conn, "SET CONSTRAINTS ALL IMMEDIATE")
    for key in cyclic:
        if not key.deferrable:
            _run(
                conn,
                f"ALTER TABLE {qt}.{quote_ident(key.table)} ALTER CONSTRAINT "
                f"{quote_ident(key.name)} NOT DEFERRABLE",
            )
    for table, name in triggers:
        _run(conn, f"ALTER TABLE {qt}.{quote_ident(table)} ENABLE TRIGGER {quote_ident(name)}")
    _sequences(conn, source, target)
    for (view,) in _rows(conn, _MATVIEWS, [source]):
        _run(conn, f"REFRESH MATERIALIZED VIEW {qt}.{quote_ident(view)}")
    return counts


def _run(conn: Connection, sql: str) -> int:
    return driver(conn).execute(sql.encode("utf-8")).rowcount


def _copy_table(
    conn: Connection,
    qs: str,
    qt: str,
    table: str,
    theirs: list[_Column],
    ours: list[_Column] | None,
) -> int:
    if ours is None:
        raise CloneMismatch(f"table {table} of the source has no counterpart in the clone")
    given = {c.name: c for c in theirs if not c.generated}
    columns = [c for c in ours if not c.generated and c.name in given]
    if not columns:
        return 0
    names = ", ".join(quote_ident(c.name) for c in columns)
    values = ", ".join(
        quote_ident(c.name) + ("" if given[c.name].type == c.type else f"::text::{c.type}")
        for c in columns
    )
    overriding = " OVERRIDING SYSTEM VALUE" if any(c.identity for c in columns) else ""
    return _run(
        conn,
        f"INSERT INTO {qt}.{quote_ident(table)} ({names}){overriding} "
        f"SELECT {values} FROM {qs}.{quote_ident(table)}",
    )


def _sequences(conn: Connection, source: str, target: str) -> None:
    """The source's sequence states, then each owned one past its column's values."""
    qs, qt = quote_ident(source), quote_ident(target)
    for seq, table, column, counts_up in _rows(conn, _SEQUENCES, [source]):
        mine = quote_literal(f"{qt}.{quote_ident(seq)}")
        _run(
            conn,
            f"SELECT setval({mine}, last_value, is_called) FROM {qs}.{quote_ident(seq)}",
        )
        if table is not None and counts_up:
            _run(
                conn,
                f"SELECT setval({mine}, m) FROM (SELECT max({quote_ident(column)}) AS m "
                f"FROM {qt}.{quote_ident(table)}) x WHERE m >= (SELECT last_value FROM "
                f"{qt}.{quote_ident(seq)})",
            )


def _order(tables: list[str], keys: list[_Key]) -> tuple[list[str], list[_Key]]:
    """Tables with every table they refer to first (Tarjan's strongly connected
    components come out in that order), and the keys inside a cycle of two or more."""
    refers: dict[str, list[str]] = {t: [] for t in tables}
    for key in keys:
        if key.table in refers and key.references in refers and key.table != key.references:
            refers[key.table].append(key.references)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(table: str) -> None:
        index[table] = low[table] = len(index)
        stack.append(table)
        for other in refers[table]:
            if other not in index:
                visit(other)
                low[table] = min(low[table], low[other])
            elif other in stack:
                low[table] = min(low[table], index[other])
        if low[table] == index[table]:
            component: list[str] = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == table:
                    break
            components.append(sorted(component))

    for table in tables:
        if table not in index:
            visit(table)
    where = {t: i for i, c in enumerate(components) for t in c}
    cyclic = [
        k
        for k in keys
        if k.table != k.references
        and k.table in where
        and where.get(k.references) == where[k.table]
    ]
    return [t for c in components for t in c], cyclic
