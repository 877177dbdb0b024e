"""``stamp``: record migrations as applied, or remove their records, without running them.

For a schema whose structure is already there (made by hand or by another tool), or a
ledger that must forget a step undone by hand. Each schema changes in one transaction
under its lock, from the ledger it was planned from, with its state row rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import psycopg
from sqlalchemy.engine import Connection

from .. import steps
from ..config import Config
from ..database import run_script
from ..errors import MtmError, UsageError, ValidationFailed
from ..ledger import existing_ledgers, read_ledgers
from ..migrations import Migration, Namespace, discover
from ..plan import StampChange, stamp_change
from ..results import StampResult
from ..tables import ensure_bootstrap
from ..tables import existing as _existing
from ..words import plural
from .base import chosen_namespace, chosen_schemas, session

log = logging.getLogger("mtm.stamp")

# Called with every change before any is made (the CLI prints them).
Show = Callable[[Sequence[StampChange]], None]


def stamp(
    config: Config,
    name: str,
    *,
    tenants: Sequence[str] | None = None,
    all_tenants: bool = False,
    public: bool = False,
    delete: bool = False,
    yes: bool = False,
    show: Show | None = None,
) -> StampResult:
    """Record every migration up to and including ``name`` (``head``: the newest file)
    that the chosen schemas have not recorded, with its file's checksum; with
    ``delete``, remove the records of ``name`` and everything after it. No migration
    code runs. Everything is checked first; more than one schema needs ``yes``.
    """
    namespace = chosen_namespace(tenants, all_tenants, public)
    migrations = discover(config.migrations_directory).of(namespace)
    target = _resolve(migrations, namespace, name)
    with session(config, purpose="mtm stamp") as (_, conn):
        tables = _existing(conn, config)
        schemas = chosen_schemas(conn, config, tables, tenants, public)
        changes = _plan(conn, config, schemas, namespace, migrations, target, delete)
        if show is not None:
            show(changes)
        if len(changes) > 1 and not yes:
            raise UsageError(
                f"refusing to stamp {plural(len(changes), 'schema')} without --yes "
                "(nothing was changed)"
            )
        if changes and not (tables["state"] and tables["ledger"]):
            ensure_bootstrap(conn, config)
        _apply(conn, config, changes)
    return StampResult(namespace, target, delete, changes)


def _resolve(migrations: Sequence[Migration], namespace: Namespace, name: str) -> str:
    """The migration ``name`` names (``head``: the newest), refused if there is no file."""
    if name == "head":
        if not migrations:
            raise UsageError(f"there are no {namespace} migrations to stamp")
        return migrations[-1].name
    if not any(m.name == name for m in migrations):
        raise UsageError(
            f"there is no {namespace} migration {name!r} (names are file names without "
            "the extension; 'head' is the newest)"
        )
    return name


def _plan(
    conn: Connection,
    config: Config,
    schemas: Sequence[str],
    namespace: Namespace,
    migrations: Sequence[Migration],
    target: str,
    delete: bool,
) -> list[StampChange]:
    """The changes of the schemas that have any; refuses edited files in their range."""
    present = existing_ledgers(conn, config, schemas)
    ledgers = read_ledgers(conn, config, [s for s in schemas if s in present])
    changes: list[StampChange] = []
    problems: list[str] = []
    for schema in schemas:
        ledger = ledgers[schema] if schema in present else None
        change, wrong = stamp_change(schema, namespace, migrations, ledger, target, delete=delete)
        problems += wrong
        if change.record or change.delete:
            changes.append(change)
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValidationFailed(
            "refusing to stamp anything: "
            + "; ".join(problems[:3])
            + more
            + " (nothing was changed)"
        )
    return changes


def _apply(conn: Connection, config: Config, changes: Sequence[StampChange]) -> None:
    """One transaction per schema; a ledger that moved while stamp waited for its lock
    (a migrate or down ran) stops the stamp there, saying what was done."""
    for i, change in enumerate(changes):
        try:
            run_script(conn, steps.stamp(config, change))
        except psycopg.Error as exc:
            if exc.sqlstate != steps.LEDGER_MOVED:
                raise
            done = ", ".join(c.schema for c in changes[:i]) or "none"
            raise MtmError(
                f"the ledger of schema {change.schema} changed while stamp waited for it "
                f"(a migrate or down ran): it and the schemas after it were not stamped "
                f"(stamped before it: {done}); run mtm stamp again"
            ) from None
        log.info(
            "stamped %s: %s",
            change.schema,
            "deleted " + ", ".join(change.delete)
            if change.delete
            else "recorded " + ", ".join(m.name for m in change.record),
            extra={
                "event": "stamp.schema",
                "schema": change.schema,
                "namespace": change.namespace,
                "recorded": [m.name for m in change.record],
                "deleted": list(change.delete),
            },
        )
