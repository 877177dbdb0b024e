"""Public tables that tenants reference, on a Citus cluster: reference tables.

A tenant's tables live on one worker node; a foreign key from one of them to a public
table holds only if that table is on every node, i.e. a Citus *reference table*
(``create_reference_table``). Public migrations make one with a directive in a SQL file
(``-- mtm:reference-table plans``) or ``op.create_reference_table("plans")`` in a
Python one. Both do nothing on a server without Citus, so the same migrations run on
one server and on a cluster. Before a run, ``refuse_unplaced_keys`` refuses a tenant
migration whose foreign key to a public table would fail on the cluster, naming it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import MigrationFileError, ValidationFailed
from .identifiers import quote_ident, quote_literal

if TYPE_CHECKING:
    from .migrations import Migration
    from .plan import SchemaPlan

log = logging.getLogger("mtm.reference")

DIRECTIVE = re.compile(
    r"^[ \t]*--[ \t]*mtm:[ \t]*reference-table\b(.*)$", re.IGNORECASE | re.MULTILINE
)
_NAME = re.compile(r"[a-z_][a-z0-9_$]*")
# A call of create_reference_table in SQL (a migration's or a rendered one's), with the
# table as a literal: what a pending public migration will make a reference table.
_CALL = re.compile(r"create_reference_table\s*\(\s*'([^']+)'", re.IGNORECASE)


def directive_tables(sql: str, where: str = "") -> list[str]:
    """The public tables a SQL script's ``-- mtm:reference-table NAME[, NAME]`` lines
    name, in order; a name mtm cannot take is refused, naming the file (``where``)."""
    out: list[str] = []
    for match in DIRECTIVE.finditer(sql):
        names = [n.strip() for n in match.group(1).split(",")]
        for name in names:
            table = name.removeprefix("public.")
            if not _NAME.fullmatch(table):
                raise MigrationFileError(
                    f"{where}'-- mtm:reference-table' takes the names of public tables "
                    f"(lowercase, separated by commas); got {name!r}"
                )
            out.append(table)
    return out


def make_reference_sql(table: str) -> str:
    """One statement that makes ``public.<table>`` a reference table on a Citus server
    (unless it is a Citus table already) and does nothing on any other server."""
    regclass = quote_literal(f"public.{quote_ident(table)}")
    return (
        "DO $mtm$ BEGIN IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN "
        "IF NOT EXISTS (SELECT 1 FROM pg_dist_partition "
        f"WHERE logicalrelid = {regclass}::regclass) "
        f"THEN PERFORM create_reference_table({regclass}); END IF; END IF; END $mtm$"
    )


def directive_sql(migration: Migration) -> list[str]:
    """The statements a public SQL migration's directives add after its script."""
    if migration.namespace != "public" or migration.kind != "sql":
        return []
    return [make_reference_sql(t) for t in directive_tables(migration.up_sql)]


def check_directives(migration: Migration, text: str) -> None:
    """Refuse a directive where it cannot work: only a public migration that runs in a
    transaction makes reference tables (a tenant's tables are never one)."""
    if DIRECTIVE.search(text) is None:
        return
    where = f"{migration.path}: "
    if migration.namespace != "public":
        raise MigrationFileError(
            f"{where}'-- mtm:reference-table' belongs in a public migration: a tenant's "
            "tables live on its node, only public tables can be reference tables"
        )
    if not migration.transactional:
        raise MigrationFileError(
            f"{where}'-- mtm:reference-table' needs the migration's transaction: remove "
            "'-- mtm:no-transaction' or move the directive into a migration of its own"
        )
    directive_tables(text, where)


def note_plain(conn: Connection, migration: Migration) -> None:
    """After a public SQL migration with directives ran on a server without Citus: a
    DEBUG record per table, as ``op.create_reference_table`` logs (its statement did
    nothing there)."""
    if migration.namespace != "public" or migration.kind != "sql":
        return
    tables = directive_tables(migration.up_sql)
    if not tables:
        return
    from .placement import on_citus

    if on_citus(conn):
        return
    for table in tables:
        _skipped(table)


def _skipped(table: str) -> None:
    log.debug(
        "public.%s stays a plain table: this server has no Citus",
        table,
        extra={"event": "reference.skipped", "table": table},
    )


# --- the op helper --------------------------------------------------------------


def register_op() -> None:
    """Give Alembic's ``op`` a ``create_reference_table(name)`` for public migrations
    (Alembic's own plugin mechanism; done once, on first use of a Python migration)."""
    from alembic.operations import MigrateOperation, Operations

    if hasattr(Operations, "create_reference_table"):
        return

    @Operations.register_operation("create_reference_table")
    class CreateReferenceTableOp(MigrateOperation):
        """Make a public table a Citus reference table (nothing on a plain server)."""

        def __init__(self, table_name: str) -> None:
            self.table_name = table_name

        @classmethod
        def create_reference_table(cls, operations: Operations, table_name: str) -> Any:
            return operations.invoke(cls(table_name))

    @Operations.implementation_for(CreateReferenceTableOp)
    def _create(operations: Operations, operation: CreateReferenceTableOp) -> None:
        table = operation.table_name.removeprefix("public.")
        if not _NAME.fullmatch(table):
            raise ValueError(f"create_reference_table takes a public table's name; got {table!r}")
        if operations.migration_context.as_sql:  # rendered (mtm sql): for either server
            operations.execute(make_reference_sql(table))
            return
        bind = operations.get_bind()
        if bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'citus'")).first():
            operations.execute(make_reference_sql(table))
            return
        _skipped(table)


# --- the check before a run -----------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """A foreign key of a tenant migration to a public table."""

    migration: str
    table: str  # the tenant table it is on
    target: str  # the public table it references


def _walk(node: Any, table: str | None) -> Iterator[tuple[str | None, Mapping[str, Any]]]:
    if isinstance(node, Mapping):
        relation = node.get("relation")
        if isinstance(relation, Mapping) and "relname" in relation:
            table = relation["relname"]
        constraint = node.get("Constraint")
        if isinstance(constraint, Mapping) and constraint.get("contype") == "CONSTR_FOREIGN":
            yield table, constraint
        for value in node.values():
            yield from _walk(value, table)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value, table)


def public_keys(migration: Migration) -> list[PublicKey]:
    """The foreign keys to ``public.*`` tables that a tenant migration adds, read from
    its SQL (a Python migration's as rendered offline, as far as it can be)."""
    from .render import render

    rendered = render(migration, None)
    out = []
    for statement in rendered.statements():
        for table, constraint in _walk(statement.node, None):
            target = constraint.get("pktable", {})
            if target.get("schemaname") == "public":
                out.append(PublicKey(migration.name, table or "?", target["relname"]))
    return out


def made_reference(migrations: Sequence[Migration]) -> set[str]:
    """The public tables that pending public migrations make reference tables."""
    from .render import render

    out: set[str] = set()
    for m in migrations:
        body = render(m, None).body
        if m.kind == "sql":
            out.update(directive_tables(m.up_sql))
        for name in _CALL.findall(body):
            out.add(name.replace('"', "").removeprefix("public."))
    return out


def reference_tables(conn: Connection, names: Sequence[str]) -> set[str]:
    """Which of the public tables ``names`` are reference tables now."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "AND p.partmethod = 'n' AND p.repmodel = 't' AND c.relname = ANY(:n)"
        ),
        {"n": list(names)},
    )
    return {r[0] for r in rows}


def unplaced_keys(
    conn: Connection, public: Sequence[Migration], tenant: Sequence[Migration]
) -> list[PublicKey]:
    """The foreign keys of the ``tenant`` migrations to public tables that are not
    reference tables and that the ``public`` migrations do not make ones."""
    keys = [k for m in tenant for k in public_keys(m)]
    if not keys:
        return []
    placed = reference_tables(conn, sorted({k.target for k in keys})) | made_reference(public)
    return [k for k in keys if k.target not in placed]


def refuse_unplaced_keys(conn: Connection, public: SchemaPlan, plans: Sequence[SchemaPlan]) -> None:
    """Before a run on a Citus cluster: refuse, naming the table, a pending tenant
    migration of a distributed tenant whose foreign key to a public table would fail."""
    from .placement import nodes

    placed = nodes(conn, [p.schema for p in plans])
    if not placed:
        return  # not a cluster, or no distributed tenant to run
    seen: dict[str, Migration] = {}
    for p in plans:
        if p.schema in placed:
            seen.update((m.name, m) for m in p.pending)
    refuse(unplaced_keys(conn, public.pending, [seen[n] for n in sorted(seen)]))


def refuse(keys: Sequence[PublicKey]) -> None:
    if not keys:
        return
    k = keys[0]
    raise ValidationFailed(
        f"tenant migration {k.migration} adds a foreign key from {k.table} to public."
        f"{k.target}, which is not a reference table: on a Citus cluster that key would "
        f"fail on the tenant's node. Make it one in a public migration first "
        f"('-- mtm:reference-table {k.target}' in SQL, op.create_reference_table"
        f'("{k.target}") in Python); nothing was run'
    )


def refuse_for_create(conn: Connection, pending: Sequence[Migration]) -> None:
    """Before a create that makes a distributed schema (schema-based sharding on), the
    same check for every tenant migration it will run (public ones ran before it). One
    query on any server: the setting exists only where Citus is loaded."""
    sharding = conn.execute(
        sa.text("SELECT current_setting('citus.enable_schema_based_sharding', true)")
    ).scalar()
    from .placement import on_citus

    if sharding == "on" and on_citus(conn):
        refuse(unplaced_keys(conn, [], pending))
