"""What mtm adds to Alembic's autogenerate, through its own hooks: PostgreSQL enums and
the bodies of CHECK constraints.

Alembic compares tables, columns, types, server defaults, indexes, unique and foreign
keys, and (its opt-in ``checkconstraint_byname`` plugin) named CHECK constraints
added or dropped. It does not see enum types being created, dropped or given a value,
nor a CHECK whose body changed. This module registers an Alembic plugin,
``mtm.autogenerate``, with two comparators (enabled only in mtm's own autogenerate
contexts, never in an application's Alembic), the operations they produce and the
renderers that write them as ``op.execute(...)``. Enum columns are rendered with
``create_type=False``: the type is created (and dropped, in ``down``) by its own
operation, once, however many tables use it.

A CHECK body is compared as the server prints it (``pg_get_constraintdef``): the
model's constraint is built in a scratch schema first (``autogenerate``) and both
sides are read back the same way, so that ``price >= 0`` and ``(price >= 0)`` are equal
and a real change is seen. Warnings (what cannot be detected or done) are collected in
the migration context's options under ``WARNINGS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from alembic.runtime.plugins import Plugin
from alembic.util import DispatchPriority, PriorityDispatchResult

from .identifiers import quote_ident, quote_literal

PLUGIN = "mtm.autogenerate"
WARNINGS = "mtm_warnings"  # list[str] in MigrationContext.opts
SCHEMA = "mtm_schema"  # the schema compared, by its real name
CHECK_BODIES = "mtm_check_bodies"  # {(table, name): body} or an str saying why there are none


@dataclass
class EnumColumn:
    """A column of an enum type, as the database has it: needed to rebuild the type."""

    table: str
    column: str
    default: str | None


class CreateEnumOp(ops.MigrateOperation):
    """``CREATE TYPE name AS ENUM (...)``."""

    def __init__(self, name: str, values: list[str]) -> None:
        self.name, self.values = name, values

    def reverse(self) -> DropEnumOp:
        return DropEnumOp(self.name, self.values)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_enum", self.name, tuple(self.values))


class DropEnumOp(ops.MigrateOperation):
    """``DROP TYPE name`` (after the tables that used it are gone)."""

    def __init__(self, name: str, values: list[str]) -> None:
        self.name, self.values = name, values

    def reverse(self) -> CreateEnumOp:
        return CreateEnumOp(self.name, self.values)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_enum", self.name, tuple(self.values))


@dataclass
class AddEnumValuesOp(ops.MigrateOperation):
    """``ALTER TYPE name ADD VALUE ...`` for each new value, at its place in the order."""

    name: str
    old: list[str]
    new: list[str]
    columns: list[EnumColumn] = field(default_factory=list)

    def reverse(self) -> RebuildEnumOp:
        return RebuildEnumOp(self.name, self.new, self.old, self.columns)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_enum_values", self.name, tuple(v for v in self.new if v not in self.old))


@dataclass
class RebuildEnumOp(ops.MigrateOperation):
    """Give an enum fewer values, which PostgreSQL can only do by building a new type and
    moving every column to it (fails, as it should, while a row holds a removed value)."""

    name: str
    old: list[str]
    new: list[str]
    columns: list[EnumColumn] = field(default_factory=list)

    def reverse(self) -> AddEnumValuesOp:
        return AddEnumValuesOp(self.name, self.new, self.old, self.columns)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_enum_values", self.name, tuple(v for v in self.old if v not in self.new))


# --- rendering -------------------------------------------------------------------------


def _execute(sql: str) -> str:
    return f"op.execute({sql!r})"


def _values(values: list[str]) -> str:
    return ", ".join(quote_literal(v) for v in values)


@renderers.dispatch_for(CreateEnumOp)
def _render_create(autogen_context: AutogenContext, op: CreateEnumOp) -> str:
    return _execute(f"CREATE TYPE {quote_ident(op.name)} AS ENUM ({_values(op.values)})")


@renderers.dispatch_for(DropEnumOp)
def _render_drop(autogen_context: AutogenContext, op: DropEnumOp) -> str:
    return _execute(f"DROP TYPE {quote_ident(op.name)}")


@renderers.dispatch_for(AddEnumValuesOp)
def _render_add_values(autogen_context: AutogenContext, op: AddEnumValuesOp) -> list[str]:
    lines = []
    for sql in add_value_statements(op.name, op.old, op.new):
        lines.append(_execute(sql))
    return lines


@renderers.dispatch_for(RebuildEnumOp)
def _render_rebuild(autogen_context: AutogenContext, op: RebuildEnumOp) -> list[str]:
    return [_execute(sql) for sql in rebuild_statements(op.name, op.new, op.columns)]


def add_value_statements(name: str, old: list[str], new: list[str]) -> list[str]:
    """``ALTER TYPE ... ADD VALUE`` for each value of ``new`` not in ``old``, placed
    BEFORE the next value already there (or AFTER the one before it), so that the
    type's order becomes ``new``'s."""
    present = list(old)
    out = []
    for i, value in enumerate(new):
        if value in present:
            continue
        after = next((v for v in reversed(new[:i]) if v in present), None)
        before = next((v for v in new[i + 1 :] if v in present), None)
        where = ""
        if before is not None:
            where = f" BEFORE {quote_literal(before)}"
        elif after is not None:
            where = f" AFTER {quote_literal(after)}"
        out.append(f"ALTER TYPE {quote_ident(name)} ADD VALUE {quote_literal(value)}{where}")
        present.insert(present.index(before) if before is not None else len(present), value)
    return out


def rebuild_statements(name: str, values: list[str], columns: list[EnumColumn]) -> list[str]:
    """The statements that give enum ``name`` exactly ``values``: rename the old type,
    create the new one, move each column (its default dropped and set again), drop the
    old type."""
    old = f"{name}_old"
    out = [
        f"ALTER TYPE {quote_ident(name)} RENAME TO {quote_ident(old)}",
        f"CREATE TYPE {quote_ident(name)} AS ENUM ({_values(values)})",
    ]
    for c in columns:
        table, column = quote_ident(c.table), quote_ident(c.column)
        if c.default is not None:
            out.append(f"ALTER TABLE {table} ALTER COLUMN {column} DROP DEFAULT")
        out.append(
            f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {quote_ident(name)} "
            f"USING {column}::text::{quote_ident(name)}"
        )
        if c.default is not None:
            default = c.default.replace(f"::{old}", f"::{name}")
            out.append(f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT {default}")
    out.append(f"DROP TYPE {quote_ident(old)}")
    return out


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Enum columns without their own CREATE TYPE (``CreateEnumOp`` does that once)."""
    if type_ == "type" and isinstance(obj, sa.Enum) and obj.native_enum and obj.name:
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        values = ", ".join(repr(v) for v in obj.enums)
        schema = f", schema={obj.schema!r}" if obj.schema else ""
        return f"postgresql.ENUM({values}, name={obj.name!r}{schema}, create_type=False)"
    return False


# --- comparing -------------------------------------------------------------------------


def warn(autogen_context: AutogenContext, message: str) -> None:
    """Keep a line for the command to print: what autogenerate cannot do by itself."""
    found: list[str] = autogen_context.migration_context.opts.setdefault(WARNINGS, [])
    if message not in found:
        found.append(message)


def model_enums(tables: list[sa.Table], public: bool) -> dict[str, list[str]]:
    """The native enum types of one namespace (``public`` or not) that the tables use:
    name -> values in order. A type is public if it says ``schema="public"`` (a tenant
    table may use one) or has no schema and a public table uses it."""
    found: dict[str, list[str]] = {}
    for table in tables:
        for column in table.columns:
            t = column.type
            if isinstance(t, sa.Enum) and t.native_enum and t.name:
                in_public = t.schema == "public" or (t.schema is None and table.schema == "public")
                if in_public == public:
                    found.setdefault(t.name, list(t.enums))
    return found


def _compare_enums(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, schemas: set[str | None]
) -> PriorityDispatchResult:
    """Enums created, dropped or given new values. Runs after the tables' comparison, so
    creations go first and drops last."""
    inspector: Any = autogen_context.inspector  # PostgreSQL's, with get_enums
    schema = autogen_context.migration_context.opts[SCHEMA]
    database = {e["name"]: list(e["labels"]) for e in inspector.get_enums(schema=schema)}
    models = model_enums(list(autogen_context.sorted_tables), public=schema == "public")
    first: list[ops.MigrateOperation] = []
    for name, values in models.items():
        have = database.get(name)
        if have is None:
            first.append(CreateEnumOp(name, values))
        elif have != values:
            missing = [v for v in have if v not in values]
            kept = [v for v in values if v in have]
            if missing or kept != have:
                warn(
                    autogen_context,
                    f"enum {name}: values removed or reordered ({', '.join(have)} -> "
                    f"{', '.join(values)}) are not generated: write that migration by hand",
                )
            if len(kept) < len(values):
                columns = _enum_columns(inspector, schema, name)
                first.append(AddEnumValuesOp(name, have, values, columns))
                added = ", ".join(v for v in values if v not in have)
                warn(
                    autogen_context,
                    f"enum {name} gains {added}: the migration adds it with ALTER TYPE ... "
                    "ADD VALUE, and PostgreSQL lets nothing use a new value in the "
                    "transaction that added it: a default or UPDATE using it belongs in a "
                    "later migration",
                )
    upgrade_ops.ops[0:0] = first
    for name, values in database.items():
        if name not in models:
            upgrade_ops.ops.append(DropEnumOp(name, values))
    return PriorityDispatchResult.CONTINUE


def _enum_columns(inspector: Any, schema: str, name: str) -> list[EnumColumn]:
    out = []
    for table in sorted(inspector.get_table_names(schema=schema)):
        for column in inspector.get_columns(table, schema=schema):
            t = column["type"]
            if isinstance(t, sa.Enum) and t.name == name:
                out.append(EnumColumn(table, column["name"], column.get("default")))
    return out


def _compare_check_bodies(
    autogen_context: AutogenContext,
    modify_table_ops: ops.ModifyTableOps,
    schema: str | None,
    tname: str,
    conn_table: sa.Table | None,
    metadata_table: sa.Table | None,
) -> PriorityDispatchResult:
    """A named CHECK on both sides whose body the server prints differently: dropped and
    added again. Added and dropped ones are Alembic's (``checkconstraint_byname``)."""
    if conn_table is None or metadata_table is None:
        return PriorityDispatchResult.CONTINUE
    bodies = autogen_context.migration_context.opts.get(CHECK_BODIES)
    models = {c.name: c for c in check_constraints(metadata_table) if isinstance(c.name, str)}
    unnamed = [c for c in check_constraints(metadata_table) if not isinstance(c.name, str)]
    if unnamed:
        warn(
            autogen_context,
            f"table {tname}: {len(unnamed)} unnamed CHECK constraint(s) not compared "
            "(give each a name)",
        )
    reflected = autogen_context.inspector.get_check_constraints(tname, schema=schema)
    for ck in reflected:
        model = models.get(ck["name"] or "")
        if model is None:
            continue
        if not isinstance(bodies, dict):
            warn(
                autogen_context,
                f"CHECK {ck['name']} on {tname}: its body was not compared ({bodies}); "
                "a change to it is not in the migration",
            )
            continue
        wanted = bodies.get((tname, ck["name"]))
        if wanted is not None and wanted != ck["sqltext"]:
            old = sa.CheckConstraint(sa.text(ck["sqltext"]), name=ck["name"], table=conn_table)
            modify_table_ops.ops.append(ops.DropConstraintOp.from_constraint(old))
            modify_table_ops.ops.append(ops.AddConstraintOp.from_constraint(model))
    return PriorityDispatchResult.CONTINUE


def check_constraints(table: sa.Table) -> list[sa.CheckConstraint]:
    """A table's CHECK constraints, its columns' own included."""
    found: list[sa.CheckConstraint] = []
    for c in [*table.constraints, *(k for col in table.columns for k in col.constraints)]:
        if isinstance(c, sa.CheckConstraint) and c not in found:
            found.append(c)
    return found


def _setup(plugin: Plugin) -> None:
    plugin.add_autogenerate_comparator(
        _compare_enums, "schema", "enums", priority=DispatchPriority.LAST
    )
    plugin.add_autogenerate_comparator(_compare_check_bodies, "table", "checkbodies")


_setup(Plugin(PLUGIN))  # once, at import; used only where PLUGINS is passed
PLUGINS = ["alembic.autogenerate.*", "alembic.ext.checkconstraint_byname", PLUGIN]
