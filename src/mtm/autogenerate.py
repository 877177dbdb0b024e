"""Comparing a schema at head with the models, through Alembic's autogenerate.

The schema is one of a throwaway database (``throwaway``) where mtm itself applied
every migration: ``public`` for the public namespace, ``TENANT_SCHEMA`` for the tenant
one. Each is compared with the session's ``search_path`` set to that schema alone, so
that it is SQLAlchemy's default schema: tables render with no schema (a tenant
migration names no tenant schema) and foreign keys to ``public.*`` stay qualified.
Alembic does the comparison (its comparators, its opt-in named-CHECK plugin and
mtm's own hooks in ``autogenhooks``) and the rendering; this module only sets them up,
reads back what Alembic warned about and what it cannot tell (renames), and renders
the migration file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects import postgresql

from . import autogenhooks, autogensafe, throwaway
from .config import Config
from .errors import MtmError
from .migrations import Namespace
from .modelset import PUBLIC, ModelSet

TENANT_SCHEMA = "mtm_autogen_tenant"
NO_SCHEMA = "mtm_autogen_none"  # never created: a search_path with no schema in it
MODELS_SCHEMA = "mtm_autogen_models"  # the models' CHECKs, built to read them back

FILE_TEMPLATE = '''"""{message}

Written by mtm new --autogenerate from the models: read it before it runs.
"""

import sqlalchemy as sa  # noqa: F401
from sqlalchemy.dialects import postgresql  # noqa: F401
{transactional}

def up(op):
{up}


def down(op):
{down}
'''


_NO_TRANSACTION = (
    "\n# CREATE/DROP INDEX CONCURRENTLY cannot run in a transaction: each statement commits."
    "\ntransactional = False\n"
)


@dataclass
class Comparison:
    """What the models add to a namespace's schema at head, rendered, and the warnings."""

    namespace: Namespace
    script: ops.MigrationScript
    up: str
    down: str
    warnings: list[str] = field(default_factory=list)
    transactional: bool = True  # False: indexes built CONCURRENTLY (``autogensafe``)

    @property
    def empty(self) -> bool:
        return bool(self.script.upgrade_ops is None or self.script.upgrade_ops.is_empty())

    def text(self, message: str) -> str:
        """The migration file."""
        return FILE_TEMPLATE.format(
            message=message.replace('"""', "'''"),
            up=self.up,
            down=self.down,
            transactional="" if self.transactional else _NO_TRANSACTION,
        )


def own_tables(config: Config, namespace: Namespace, found: Iterable[str] = ()) -> set[str]:
    """mtm's tables in a schema of ``namespace`` (``found``: those its bootstrap made in
    public), never compared."""
    ledger = config.migrations_table
    if namespace == "tenant":
        return {ledger}
    return {
        *found,
        config.tenant_table,
        config.domain_table,
        ledger,
        config.state_table,
        f"{ledger}_version",
        f"{ledger}_repairs",
    }


def compare(
    config: Config, namespace: Namespace, models: ModelSet, mtm_tables: Iterable[str] = ()
) -> Comparison:
    """Compare the throwaway database of ``config`` (built at head) with the models;
    ``mtm_tables`` are mtm's own public tables there."""
    schema = PUBLIC if namespace == "public" else TENANT_SCHEMA
    bodies = check_bodies(config, models.tables(namespace))
    # public: no default schema (Alembic would show it as None, the models say "public")
    engine = throwaway.engine(config, NO_SCHEMA if namespace == "public" else schema)
    try:
        with engine.connect() as conn, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_schemas": namespace == "public",
                    "include_name": _only_public if namespace == "public" else None,
                    "include_object": _filter(own_tables(config, namespace, mtm_tables), namespace),
                    autogenhooks.SCHEMA: schema,
                    "compare_type": True,
                    "compare_server_default": True,
                    "autogenerate_plugins": autogenhooks.PLUGINS,
                    "render_item": autogenhooks.render_item,
                    autogenhooks.CHECK_BODIES: bodies,
                    autogenhooks.WARNINGS: [],
                },
            )
            script = produce_migrations(context, models.metadata)
            transactional = not autogensafe.concurrent_indexes(script)
            found: list[str] = list(context.opts[autogenhooks.WARNINGS])
            found += autogensafe.warnings(script)
            if namespace == "tenant":
                found += _missing_public(conn, models)
            up = _render(script.upgrade_ops, context)
            down = _render(script.downgrade_ops, context)
        found += [f"alembic: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
    finally:
        engine.dispose()
    for name in (TENANT_SCHEMA, MODELS_SCHEMA, NO_SCHEMA, throwaway.PREFIX):
        if name in up or name in down:  # the migration would run in one schema only
            raise MtmError(f"the generated migration names {name}; this is a bug in mtm")
    result = Comparison(namespace, script, up, down, found, transactional)
    result.warnings += renames(script)
    return result


def _only_public(name: str | None, type_: str, parent: Any) -> bool:
    return type_ != "schema" or name == PUBLIC


def _filter(own: set[str], namespace: Namespace) -> Any:
    """Leave out mtm's own tables, and the model tables of the other namespace."""
    wanted = PUBLIC if namespace == "public" else None

    def include(obj: Any, name: str | None, type_: str, reflected: bool, other: Any) -> bool:
        if type_ != "table":
            return True
        if name in own:
            return False
        return reflected or obj.schema == wanted

    return include


def _render(up_or_down: ops.UpgradeOps | ops.DowngradeOps | None, context: Any) -> str:
    assert up_or_down is not None
    text = render_python_code(
        up_or_down, render_item=autogenhooks.render_item, migration_context=context
    )
    lines = [line for line in text.splitlines() if "### " not in line]
    return "\n".join(lines) if lines else "    pass"


def renames(script: ops.MigrationScript) -> list[str]:
    """What may be a rename: Alembic sees a table or column dropped and another added."""
    out: list[str] = []
    upgrade = script.upgrade_ops.ops if script.upgrade_ops else []
    added = [o.table_name for o in upgrade if isinstance(o, ops.CreateTableOp)]
    dropped = [o.table_name for o in upgrade if isinstance(o, ops.DropTableOp)]
    if added and dropped:
        out.append(
            f"tables dropped ({', '.join(dropped)}) and added ({', '.join(added)}): "
            "autogenerate cannot see a rename; if it is one, use op.rename_table instead "
            "(a drop loses the rows)"
        )
    for o in upgrade:
        if not isinstance(o, ops.ModifyTableOps):
            continue
        new = [c.column.name for c in o.ops if isinstance(c, ops.AddColumnOp)]
        old = [c.column_name for c in o.ops if isinstance(c, ops.DropColumnOp)]
        if new and old:
            out.append(
                f"table {o.table_name}: columns dropped ({', '.join(old)}) and added "
                f"({', '.join(new)}): autogenerate cannot see a rename; if it is one, use "
                "op.alter_column(..., new_column_name=...) instead"
            )
    return out


def _missing_public(conn: sa.Connection, models: ModelSet) -> list[str]:
    """Tenant foreign keys to public tables that no public migration has created yet."""
    inspector = sa.inspect(conn)
    out = []
    for table in models.tables("tenant"):
        for fk in table.foreign_keys:
            parts = fk.target_fullname.split(".")
            if len(parts) == 3 and parts[0] == PUBLIC:
                if not inspector.has_table(parts[1], schema=PUBLIC):
                    out.append(
                        f"table {table.name} refers to public.{parts[1]}, which no public "
                        "migration creates yet: run mtm new public --autogenerate first"
                    )
    return sorted(set(out))


def check_bodies(config: Config, tables: list[sa.Table]) -> dict[tuple[str, str], str] | str:
    """Each named CHECK of ``tables`` as the server prints it: built on copies of the
    tables (columns and CHECKs only) in a scratch schema of the throwaway database, read
    back, rolled back. Or, if they cannot be built, why (the caller warns)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    compiler = dialect.ddl_compiler(dialect, None).sql_compiler  # type: ignore[arg-type]
    metadata = sa.MetaData()
    for table in tables:
        checks = [c for c in autogenhooks.check_constraints(table) if isinstance(c.name, str)]
        if checks:
            sa.Table(
                table.name,
                metadata,
                *(sa.Column(c.name, c.type.copy()) for c in table.columns),
                *(
                    sa.CheckConstraint(
                        sa.text(
                            compiler.process(c.sqltext, include_table=False, literal_binds=True)
                        ),
                        name=c.name,
                    )
                    for c in checks
                ),
                schema=MODELS_SCHEMA,
            )
    if not metadata.tables:
        return {}
    engine = throwaway.engine(config, MODELS_SCHEMA, PUBLIC)
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            conn.exec_driver_sql(f"CREATE SCHEMA {MODELS_SCHEMA}")
            metadata.create_all(conn)
            inspector = sa.inspect(conn)
            found = {
                (table.name, ck["name"] or ""): ck["sqltext"]
                for table in metadata.tables.values()
                for ck in inspector.get_check_constraints(table.name, schema=MODELS_SCHEMA)
            }
            transaction.rollback()
            return found
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"the models' CHECKs could not be built to compare them: {reason}"
    finally:
        engine.dispose()
