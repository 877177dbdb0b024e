"""A database of the original multi-tenant-migrate tool: reading it, and the SQL that
moves it into mtm's tables.

The original tool keeps a mapper table ``public.<tenant_table>`` (``id``, ``domain``,
``schema``, ``"createdAt"``, ``"updatedAt"``) and, in public and in every tenant schema,
a ledger ``<migrations_table>(filename)`` of names such as
``tenant:1546110701000-create-table-A.js``. The legacy JSON config maps both names onto
mtm's ``tenant_table`` and ``migrations_table``, so each legacy table is retired as
``<name>_legacy`` (with its indexes, whose names mtm's tables take next) and mtm's table
is created in its place. Nothing is dropped: the legacy tables stay to undo by hand.

An adoption is one transaction for the registry and the public schema, then one per
tenant schema. The first creates the marker ``public.<migrations_table>_adoption`` with
the schemas still to adopt; each tenant's transaction deletes its row; the last step
drops the marker. While it exists every other command refuses (``tables.inspect``), and
``mtm adopt`` run again finishes the work from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import steps
from .config import Config
from .identifiers import do_block, quote_ident, quote_literal
from .ledger import PUBLIC, ledger_ddl, ledger_ref
from .locks import schema_lock_sql
from .migrations import Migration
from .registry import domain_ref, tenant_ref
from .tables import adoption_ref, create_sql

RETIRED = "_legacy"  # the suffix of a legacy table once mtm's took its name
MAPPER_COLUMNS = ("domain", "schema")
LEDGER_COLUMNS = ("filename",)


def retired_ledger(config: Config) -> str:
    """The name an adopted schema's ledger of the original tool keeps beside mtm's: its
    history, not part of its structure (diff and clone leave it out; a schema created
    later never has it)."""
    return f"{config.migrations_table}{RETIRED}"


@dataclass(frozen=True)
class LegacyTenant:
    """One row of the original tool's mapper table."""

    schema: str
    domain: str
    created_at: datetime | None
    updated_at: datetime | None


@dataclass
class LegacyDatabase:
    """What the original tool left, as far as an adoption still has to move it.

    ``ledgers`` maps public and each tenant schema still to adopt to the file names in
    its legacy ledger (absent: no legacy ledger). ``unfinished`` is the list of schemas
    an interrupted adoption had still to adopt (None: no adoption started).
    """

    tenants: list[LegacyTenant]
    existing: set[str]
    ledgers: dict[str, list[str]]
    unfinished: list[str] | None
    taken: list[str] = field(default_factory=list)  # <name>_legacy tables there already


def retired(name: str) -> str:
    return name + RETIRED


def _columns(conn: Connection, ref: str) -> set[str] | None:
    """The columns of table ``ref`` (quoted, schema-qualified), or None if there is none."""
    row = conn.execute(
        sa.text(
            "SELECT ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid "
            "AND a.attnum > 0 AND NOT a.attisdropped) FROM pg_class c "
            "WHERE c.oid = to_regclass(:r) AND c.relkind IN ('r', 'p')"
        ),
        {"r": ref},
    ).first()
    return set(row[0]) if row else None


def server_major(conn: Connection) -> int:
    """The server's major version (the pg_dump a baseline needs)."""
    return int(conn.execute(sa.text("SHOW server_version_num")).scalar() or 0) // 10000


def mapper_ref(config: Config, *, retire: bool = False) -> str:
    name = retired(config.tenant_table) if retire else config.tenant_table
    return f"{quote_ident(PUBLIC)}.{quote_ident(name)}"


def legacy_ledger_ref(config: Config, schema: str, *, retire: bool = False) -> str:
    name = retired(config.migrations_table) if retire else config.migrations_table
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def is_legacy_mapper(conn: Connection, config: Config) -> bool:
    """Whether ``public.<tenant_table>`` is the original tool's mapper table."""
    columns = _columns(conn, mapper_ref(config))
    return columns is not None and set(MAPPER_COLUMNS) <= columns


def read(conn: Connection, config: Config) -> LegacyDatabase | None:
    """The original tool's tables as an adoption sees them; None if there is nothing to
    adopt (no legacy mapper, no unfinished adoption)."""
    unfinished: list[str] | None = None
    if _columns(conn, adoption_ref(config)) is not None:
        marker = adoption_ref(config)
        query = f'SELECT schema_name FROM {marker} ORDER BY schema_name COLLATE "C"'
        unfinished = list(conn.execute(sa.text(query)).scalars())
        mapper = mapper_ref(config, retire=True)
    elif is_legacy_mapper(conn, config):
        mapper = mapper_ref(config)
    else:
        return None
    tenants = _mapper_rows(conn, mapper, _columns(conn, mapper) or set())
    schemas = [t.schema for t in tenants] if unfinished is None else unfinished
    existing = set(
        conn.execute(
            sa.text("SELECT nspname::text FROM pg_namespace WHERE nspname = ANY(:s)"),
            {"s": [t.schema for t in tenants]},
        ).scalars()
    )
    wanted = ([PUBLIC] if unfinished is None else []) + [s for s in schemas if s in existing]
    ledgers = read_ledgers(conn, config, wanted)
    retiring = [legacy_ledger_ref(config, s, retire=True) for s in ledgers]
    if unfinished is None:
        retiring.insert(0, mapper_ref(config, retire=True))
    taken = conn.execute(
        sa.text("SELECT r FROM unnest(CAST(:r AS text[])) r WHERE to_regclass(r) IS NOT NULL"),
        {"r": retiring},
    ).scalars()
    return LegacyDatabase(tenants, existing, ledgers, unfinished, list(taken))


def _mapper_rows(conn: Connection, mapper: str, columns: set[str]) -> list[LegacyTenant]:
    created = '"createdAt"::timestamptz' if "createdAt" in columns else "NULL::timestamptz"
    updated = '"updatedAt"::timestamptz' if "updatedAt" in columns else "NULL::timestamptz"
    order = "id" if "id" in columns else "domain"
    rows = conn.execute(
        sa.text(
            f"SELECT schema::text, domain::text, {created}, {updated} FROM {mapper} "
            f'ORDER BY schema COLLATE "C", {order}'
        )
    ).all()
    return [LegacyTenant(r[0], r[1], r[2], r[3]) for r in rows]


def read_ledgers(conn: Connection, config: Config, schemas: Sequence[str]) -> dict[str, list[str]]:
    """The file names in the legacy ledgers of ``schemas`` (those that have one)."""
    if not schemas:
        return {}
    found = conn.execute(
        sa.text(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = CAST(:t AS name) AND c.relkind IN ('r', 'p') "
            "AND n.nspname = ANY(:s) AND EXISTS (SELECT 1 FROM pg_attribute a WHERE "
            "a.attrelid = c.oid AND a.attname = 'filename' AND NOT a.attisdropped)"
        ),
        {"t": config.migrations_table, "s": list(schemas)},
    ).scalars()
    out: dict[str, list[str]] = {s: [] for s in found}
    ordered = [s for s in schemas if s in out]
    for i in range(0, len(ordered), 500):
        sql = " UNION ALL ".join(
            f"SELECT {quote_literal(s)}, filename::text FROM {legacy_ledger_ref(config, s)}"
            for s in ordered[i : i + 500]
        )
        for schema, filename in conn.execute(sa.text(sql)):
            out[schema].append(filename)
    return {s: sorted(out[s]) for s in ordered}


def owned_sequences(conn: Connection, schema: str, tables: Sequence[str]) -> list[str]:
    """The sequences owned by columns of ``tables`` (pg_dump dumps them on their own)."""
    return list(
        conn.execute(
            sa.text(
                "SELECT s.relname::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
                "JOIN pg_class t ON t.oid = d.refobjid "
                "JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
                "AND s.relkind = 'S' AND d.deptype IN ('a', 'i') AND n.nspname = :s "
                "AND t.relname = ANY(:t) ORDER BY 1"
            ),
            {"s": schema, "t": list(tables)},
        ).scalars()
    )


def tables_with_rows(conn: Connection, schema: str, exclude: Sequence[str]) -> list[str]:
    """The tables of ``schema`` holding at least one row (one probe each, no count)."""
    tables = conn.execute(
        sa.text(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND NOT c.relname = ANY(:x) ORDER BY 1"
        ),
        {"s": schema, "x": list(exclude)},
    ).scalars()
    probes = [
        f"SELECT {quote_literal(t)} WHERE EXISTS (SELECT 1 FROM "
        f"{quote_ident(schema)}.{quote_ident(t)})"
        for t in tables
    ]
    if not probes:
        return []
    return list(conn.execute(sa.text(" UNION ALL ".join(probes))).scalars())


# --- the SQL of an adoption ---------------------------------------------------------------


def retire_sql(schema: str, table: str) -> str:
    """Rename a legacy table to ``<table>_legacy``, and its indexes (and so the
    constraints they back) from ``<table>_x`` to ``<table>_legacy_x``: mtm's table of the
    same name creates indexes of those names next."""
    s, t = quote_literal(schema), quote_literal(table)
    return do_block(
        "DECLARE r record; BEGIN "
        "FOR r IN SELECT c.relname::text AS name FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        f"WHERE i.indrelid = to_regclass(format('%I.%I', {s}, {t})) LOOP "
        f"EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', {s}, r.name, left(CASE "
        f"WHEN starts_with(r.name, {t} || '_') THEN {t} || '{RETIRED}_' || "
        f"substr(r.name, length({t}) + 2) ELSE r.name || '{RETIRED}' END, 63)); "
        "END LOOP; "
        f"EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', {s}, {t}, {t} || '{RETIRED}'); END"
    )


def adopted_rows_sql(config: Config, schema: str, record: Sequence[Migration]) -> list[str]:
    """Ledger rows recorded without running: the original tool's files with no checksum
    to verify, the baseline with its file's; all marked adopted."""
    if not record:
        return []
    values = ", ".join(
        f"({quote_literal(m.name)}, {'NULL' if m.legacy else quote_literal(m.checksum)}, true)"
        for m in record
    )
    return [f"INSERT INTO {ledger_ref(config, schema)} (name, checksum, adopted) VALUES {values}"]


def registry_script(
    config: Config,
    tenants: Sequence[tuple[str, Sequence[str], datetime | None, datetime | None]],
    public_record: Sequence[Migration],
    retire_public_ledger: bool,
    schemas: Sequence[str],
) -> list[str]:
    """The registry's and the public schema's transaction: retire the mapper (and the
    public ledger), create mtm's tables, the marker naming ``schemas``, the tenants
    (schema, domains, created and updated at) and public's ledger rows."""
    out = [retire_sql(PUBLIC, config.tenant_table)]
    if retire_public_ledger:
        out.append(retire_sql(PUBLIC, config.migrations_table))
    out += create_sql(config)
    out.append(f"CREATE TABLE {adoption_ref(config)} (schema_name text PRIMARY KEY)")
    if schemas:
        values = ", ".join(f"({quote_literal(s)})" for s in schemas)
        out.append(f"INSERT INTO {adoption_ref(config)} (schema_name) VALUES {values}")
    if tenants:
        out.append(
            f"INSERT INTO {tenant_ref(config)} (schema_name, created_at, updated_at) VALUES "
            + ", ".join(
                f"({quote_literal(s)}, {_moment(c)}, {_moment(u)})" for s, _, c, u in tenants
            )
        )
        domains = [
            f"({quote_literal(d)}, {quote_literal(s)}, {_moment(c)}, {str(i == 0).lower()})"
            for s, ds, c, _ in tenants
            for i, d in enumerate(ds)
        ]
        if domains:
            out.append(
                f"INSERT INTO {domain_ref(config)} (domain, schema_name, created_at, is_primary) "
                "VALUES " + ", ".join(domains)
            )
    out += adopted_rows_sql(config, PUBLIC, public_record)
    return steps.frame(config, PUBLIC, "public", before=out).around([])


def _moment(value: datetime | None) -> str:
    return "now()" if value is None else f"{quote_literal(value.isoformat())}::timestamptz"


def tenant_script(
    config: Config, schema: str, record: Sequence[Migration], retire_ledger: bool
) -> list[str]:
    """One tenant schema's transaction: retire its legacy ledger, create mtm's, record
    ``record`` as adopted, take the schema off the marker, write its state row."""
    before = [retire_sql(schema, config.migrations_table)] if retire_ledger else []
    before += [
        ledger_ddl(config, schema),
        *adopted_rows_sql(config, schema, record),
        f"DELETE FROM {adoption_ref(config)} WHERE schema_name = {quote_literal(schema)}",
    ]
    return steps.frame(config, schema, "tenant", before=before).around([])


def finish_script(config: Config) -> list[str]:
    """The end of an adoption: the marker goes, once no schema is left on it."""
    marker = adoption_ref(config)
    return [
        "BEGIN",
        schema_lock_sql(PUBLIC),
        do_block(
            f"BEGIN IF to_regclass({quote_literal(marker)}) IS NOT NULL THEN "
            f"IF NOT EXISTS (SELECT 1 FROM {marker}) THEN "
            f"EXECUTE {quote_literal('DROP TABLE ' + marker)}; END IF; END IF; END"
        ),
        "COMMIT",
    ]
