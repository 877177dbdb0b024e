"""Commands that only read: ``status``, ``history``, ``validate``."""

from __future__ import annotations

from collections.abc import Sequence

from .. import placement, planner
from ..audit import audit
from ..config import Config
from ..database import direct
from ..errors import UsageError
from ..fleetstatus import summary, tenant_statuses
from ..identifiers import validate_schema_name
from ..ledger import (
    PUBLIC,
    AppliedMigration,
    existing_ledgers,
    fingerprint_counts,
    read_history,
)
from ..migrations import discover, refuse_unrunnable
from ..registry import list_tenants
from ..report import LIST_LIMIT
from ..results import SchemaStatus, StatusResult, ValidateResult
from ..tables import existing as _existing
from .base import reading


def status(
    config: Config,
    *,
    tenants: Sequence[str] | None = None,
    names: bool = True,
    summarise: bool = False,
) -> StatusResult:
    """Where every schema stands: applied/total, last applied, pending, problems.

    One query for all tenants (their fingerprints); ledgers are read only for schemas
    whose fingerprint matches no prefix of the files. ``names=False``: tenants' names
    and domains are read only for a fleet small enough to be listed (the summary of a
    larger one shows neither, and reading them cost more than the rest at 100,000).
    ``summarise``: a whole fleet (no ``tenants``) of more than ``LIST_LIMIT`` tenants,
    not on Citus, comes back as positions with counts (``StatusResult.summary``),
    counted by the server: what the table shows of it, at the cost of a small one.
    A pending file that mtm would refuse to run is refused here too (exit 2), so that
    ``status --check`` fails on it; files applied everywhere are not parsed again.
    """
    # Read without the parser; a file it would refuse is refused below if it is pending.
    mset = discover(config.migrations_directory, parse=False)
    only = [validate_schema_name(t) for t in tenants] if tenants else None
    with reading(config) as conn:
        tables = _existing(conn, config)
        public = SchemaStatus.of(planner.public_plan(conn, config, mset, tables))
        result = StatusResult(public, [], len(mset.tenant), config.public_schema_display_name)
        whole = summarise and only is None and tables["registry"] and tables["state"]
        if whole and not placement.on_citus(conn):
            counts = fingerprint_counts(conn, config)
            if sum(n for _, n in counts) > LIST_LIMIT:
                result.summary = summary(conn, config, mset.tenant, counts)
        if result.summary is None:
            rows = planner.tenant_rows(conn, config, tables, only)
            read_names = bool(rows) and (names or len(rows) <= LIST_LIMIT)
            info = (
                {t.schema: (t.name, t.domains) for t in list_tenants(conn, config, only)}
                if read_names
                else {}
            )
            result.tenants = tenant_statuses(conn, config, mset.tenant, rows, info)
            placed = placement.nodes(conn, [schema for schema, _ in rows])
            result.nodes = None if placed is None else {s: str(n) for s, n in placed.items()}
    pending = {name for s, _ in [(public, 1), *result.positions()] for name in s.pending}
    refuse_unrunnable(m for m in [*mset.public, *mset.tenant] if m.name in pending)
    return result


def history(
    config: Config, *, tenant: str | None = None, public: bool = False
) -> list[AppliedMigration]:
    """The ledger of one schema, oldest first."""
    if bool(tenant) == public:
        raise UsageError("choose one of --tenant SCHEMA or --public")
    schema = PUBLIC if public else validate_schema_name(tenant)
    with reading(config) as conn:
        if schema not in existing_ledgers(conn, config, [schema]):
            if not public:  # raises for an unknown tenant
                planner.tenant_rows(conn, config, _existing(conn, config), [schema])
            return []
        return read_history(conn, config, schema)


def validate(config: Config) -> ValidateResult:
    """Check applied migrations against the files, the registry against the schemas, and
    the state summary against the ledgers."""
    mset = discover(config.migrations_directory)
    with reading(config) as conn:
        return audit(conn, config, mset, _existing(conn, config), another=lambda: direct(config))
