"""``repair``: after a reviewed edit of an applied migration's file, record the file's
new checksum in the ledgers that hold the old one, keeping the old one in the audit.

No migration code runs. Everything is checked first; each schema changes in one
transaction under its lock (``mtm.repairs``). A ledger that moved while repair waited
for the lock (a migrate ran a step) is read again and the schema repaired from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from sqlalchemy.engine import Connection

from .. import steps
from ..checksum_repair import (
    RepairChange,
    RepairRow,
    operator,
    read_repairs,
    repair_change,
    repair_sql,
)
from ..config import Config
from ..database import rollback_quietly, run_script
from ..errors import MtmError, UsageError
from ..identifiers import validate_schema_name
from ..ledger import PUBLIC, read_ledgers
from ..migrations import Migration, Namespace, discover
from ..tables import existing as _existing
from ..words import plural
from .base import chosen_namespace, chosen_schemas, session

log = logging.getLogger("mtm.repair")

# Called with every change before any is made (the CLI prints them).
Show = Callable[[Sequence[RepairChange]], None]

# How many times a schema whose ledger keeps moving under the repair is read again.
ATTEMPTS = 5


@dataclass
class RepairResult:
    """The migration repaired and each schema's change, as made."""

    namespace: Namespace
    name: str
    changes: list[RepairChange]


def repair(
    config: Config,
    name: str,
    *,
    tenants: Sequence[str] | None = None,
    all_tenants: bool = False,
    public: bool = False,
    yes: bool = False,
    show: Show | None = None,
) -> RepairResult:
    """Record migration ``name``'s current checksum wherever the chosen schemas recorded
    another one, with an audit row each (old and new checksum, when, who). Refused
    (exit 2, nothing changed) for an unknown name, an unregistered tenant, or when no
    chosen schema needs it; more than one schema needs ``yes``.
    """
    namespace = chosen_namespace(tenants, all_tenants, public)
    migration = _file(discover(config.migrations_directory).of(namespace), namespace, name)
    with session(config, purpose="mtm repair") as (_, conn):
        schemas = chosen_schemas(conn, config, _existing(conn, config), tenants, public)
        changes = _plan(conn, config, schemas, namespace, migration)
        if not changes:
            raise UsageError(
                f"nothing to repair: no chosen schema recorded {namespace} migration {name} "
                "with a checksum other than its file's (nothing was changed)"
            )
        if show is not None:
            show(changes)
        if len(changes) > 1 and not yes:
            raise UsageError(
                f"refusing to repair {plural(len(changes), 'schema')} without --yes "
                "(nothing was changed)"
            )
        done: list[RepairChange] = []
        for change in changes:
            try:
                made = _apply(conn, config, change, operator())
            except psycopg.Error as exc:
                reason = str(exc).strip().splitlines()[0]
                before = ", ".join(c.schema for c in done) or "none"
                raise MtmError(
                    f"repairing schema {change.schema} failed: {reason}; it and the schemas "
                    f"after it were not repaired (repaired before it: {before})"
                ) from None
            if made is not None:
                done.append(made)
    return RepairResult(namespace, name, done)


def repairs(config: Config, *, tenant: str | None = None, public: bool = False) -> list[RepairRow]:
    """The audit of every repair, oldest first (of one schema with ``tenant``/``public``)."""
    schema = PUBLIC if public else validate_schema_name(tenant) if tenant is not None else None
    with session(config) as (_, conn):
        if not _existing(conn, config)["repairs"]:
            return []
        return read_repairs(conn, config, schema)


def _file(migrations: Sequence[Migration], namespace: Namespace, name: str) -> Migration:
    found = next((m for m in migrations if m.name == name), None)
    if found is None:
        raise UsageError(
            f"there is no {namespace} migration {name!r} (names are file names without "
            "the extension)"
        )
    return found


def _plan(
    conn: Connection,
    config: Config,
    schemas: Sequence[str],
    namespace: Namespace,
    migration: Migration,
) -> list[RepairChange]:
    ledgers = read_ledgers(conn, config, schemas)
    out = [repair_change(s, namespace, migration, ledgers[s]) for s in schemas]
    return [c for c in out if c is not None]


def _apply(conn: Connection, config: Config, change: RepairChange, who: str) -> RepairChange | None:
    """Repair one schema; if its ledger moved while repair waited, plan it again from
    the ledger as it is now (None: nothing is left to repair there)."""
    current: RepairChange | None = change
    for _ in range(ATTEMPTS):
        if current is None:
            return None
        try:
            run_script(conn, repair_sql(config, current, who))
        except psycopg.Error as exc:
            rollback_quietly(conn)
            if exc.sqlstate != steps.LEDGER_MOVED:
                raise
            again = _plan(conn, config, [change.schema], change.namespace, change.migration)
            current = again[0] if again else None
            continue
        log.info(
            "repaired %s in %s: checksum %s -> %s",
            current.migration.name,
            current.schema,
            current.old[:12],
            current.migration.checksum[:12],
            extra={
                "event": "repair.schema",
                "schema": current.schema,
                "namespace": current.namespace,
                "migration": current.migration.name,
                "old_checksum": current.old,
                "new_checksum": current.migration.checksum,
            },
        )
        return current
    raise MtmError(
        f"the ledger of schema {change.schema} kept changing while repair waited for it; "
        "run mtm repair again when no migrate is running"
    )
