"""Re-recording the checksum of an applied migration whose file was edited on purpose
(``mtm repair``), and the audit of every such change.

A repair never runs migration code. In one transaction under the schema's lock
(``steps.frame``), refused if the ledger moved since it was read, it rewrites the
ledger row's checksum, writes the audit row (old and new checksum, when, who) in
``public.<migrations_table>_repairs`` and rewrites the schema's state row, so that
``validate`` and the fingerprints agree with the files afterwards.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import steps
from .config import Config
from .identifiers import quote_literal
from .ledger import ledger_ref
from .migrations import Migration, Namespace
from .plan import LedgerRow, fingerprint
from .tables import repairs_ref


@dataclass(frozen=True)
class RepairChange:
    """One schema's ledger row of ``migration`` to re-record: its checksum was
    ``old``, the file's is ``migration.checksum``; planned from a ledger whose
    fingerprint was ``expected``."""

    schema: str
    namespace: Namespace
    migration: Migration
    old: str
    expected: str


@dataclass(frozen=True)
class RepairRow:
    """A row of the audit: which checksum was re-recorded where, when and by whom."""

    id: int
    schema: str
    migration: str
    old_checksum: str | None
    new_checksum: str
    repaired_at: datetime
    repaired_by: str


def repair_change(
    schema: str, namespace: Namespace, migration: Migration, ledger: Sequence[LedgerRow]
) -> RepairChange | None:
    """The change ``migration``'s ledger row needs in this schema, None if it is not
    recorded, matches its file, or was recorded without a checksum (adopted)."""
    row = next((r for r in ledger if r.name == migration.name), None)
    if row is None or not row.checksum or row.checksum == migration.checksum:
        return None  # ledgers read an adopted row's NULL checksum as ""
    expected = fingerprint((r.name, r.checksum) for r in ledger)
    return RepairChange(schema, namespace, migration, row.checksum, expected)


def operator() -> str:
    """Who runs mtm on this machine (OS user and host), for the audit's ``repaired_by``
    next to the database role; whatever cannot be found is left out."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    try:
        host = socket.gethostname()
    except OSError:
        host = ""
    return f"{user}@{host}" if host else user


def repair_sql(config: Config, change: RepairChange, who: str) -> list[str]:
    """The one transaction of a repair: ledger row, audit row, state row."""
    lit = quote_literal
    name, new = lit(change.migration.name), lit(change.migration.checksum)
    update = (
        f"UPDATE {ledger_ref(config, change.schema)} SET checksum = {new} "
        f"WHERE name = {name} AND checksum = {lit(change.old)}"
    )
    audit = (
        f"INSERT INTO {repairs_ref(config)} "
        "(schema_name, migration, old_checksum, new_checksum, repaired_by) VALUES "
        f"({lit(change.schema)}, {name}, {lit(change.old)}, {new}, "
        f"current_user || ' (os user ' || {lit(who)} || ')')"
    )
    framed = steps.frame(
        config, change.schema, change.namespace, expected=change.expected, before=[update, audit]
    )
    return framed.around([])


def read_repairs(conn: Connection, config: Config, schema: str | None = None) -> list[RepairRow]:
    """The audit, oldest first (only ``schema``'s rows if given)."""
    where = "WHERE schema_name = :s" if schema is not None else ""
    rows = conn.execute(
        sa.text(
            "SELECT id, schema_name, migration, old_checksum, new_checksum, repaired_at, "
            f"repaired_by FROM {repairs_ref(config)} {where} ORDER BY id"
        ),
        {"s": schema} if schema is not None else {},
    ).all()
    return [RepairRow(*r) for r in rows]
