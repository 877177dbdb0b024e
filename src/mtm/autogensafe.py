"""The forms of generated changes that do not lock an existing table while they work.

``mtm lint`` flags an index built, or a foreign key validated, on a table that exists
already: on thousands of tenants each one blocks writes while it reads the table. A
generated migration that only adds or drops indexes of existing tables has an exact
safe equivalent, and is written in it: ``CONCURRENTLY`` (and ``IF [NOT] EXISTS``, so a
retry after a failure goes on) in a migration with ``transactional = False``. Mixed with
other changes it is not rewritten (a no-transaction migration gives up running its
other changes atomically), and a foreign key has no equivalent in one migration (NOT
VALID leaves old rows unchecked until a later VALIDATE): those are left as Alembic
renders them, and a warning says what lint will say and what to do.
"""

from __future__ import annotations

from collections.abc import Iterator

from alembic.operations import ops


def _leaves(container: ops.OpContainer | None) -> Iterator[ops.MigrateOperation]:
    for op in container.ops if container is not None else ():
        if isinstance(op, ops.OpContainer):
            yield from _leaves(op)
        else:
            yield op


def _created(script: ops.MigrationScript) -> set[str]:
    return {o.table_name for o in _leaves(script.upgrade_ops) if isinstance(o, ops.CreateTableOp)}


def concurrent_indexes(script: ops.MigrationScript) -> bool:
    """Rewrite ``script`` to build and drop its indexes CONCURRENTLY if it does nothing
    else, on tables that exist already; whether it did (then the migration must be
    written with ``transactional = False``)."""
    upgrade = list(_leaves(script.upgrade_ops))
    created = _created(script)
    index_ops = (ops.CreateIndexOp, ops.DropIndexOp)
    if not upgrade or not all(
        isinstance(o, index_ops) and o.table_name not in created for o in upgrade
    ):
        return False
    for op in [*upgrade, *_leaves(script.downgrade_ops)]:
        if isinstance(op, ops.CreateIndexOp):
            op.kw["postgresql_concurrently"] = True
            op.if_not_exists = True
        elif isinstance(op, ops.DropIndexOp):
            op.kw["postgresql_concurrently"] = True
            op.if_exists = True
    return True


def warnings(script: ops.MigrationScript) -> list[str]:
    """What lint will flag in ``script`` as written, each with what to do about it."""
    created = _created(script)
    out: list[str] = []
    for op in _leaves(script.upgrade_ops):
        table = getattr(op, "table_name", None) or getattr(op, "source_table", None)
        if table in created:
            continue
        if isinstance(op, ops.CreateIndexOp) and not op.kw.get("postgresql_concurrently"):
            out.append(
                f"index {op.index_name} on the existing table {table} is built under a lock "
                "(lint: index-not-concurrent) because this migration also makes other "
                "changes: to build it CONCURRENTLY, take it out of the models, generate and "
                "apply the rest, then put it back and generate again (alone, it is written "
                "CONCURRENTLY in a no-transaction migration)"
            )
        elif isinstance(op, ops.CreateForeignKeyOp):
            out.append(
                f"foreign key {op.constraint_name or '(unnamed)'} on the existing table "
                f"{table} checks every row under a lock (lint: foreign-key-validated): on a "
                "large table add postgresql_not_valid=True to it and VALIDATE CONSTRAINT in "
                "a later migration"
            )
        elif isinstance(op, ops.CreateUniqueConstraintOp):
            out.append(
                f"unique constraint {op.constraint_name or '(unnamed)'} on the existing table "
                f"{table} builds its index under a lock (lint: index-not-concurrent): on a "
                "large table build a unique index CONCURRENTLY first and add the "
                "constraint USING INDEX"
            )
    return out
