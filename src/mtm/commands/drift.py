"""``diff``: every tenant schema's real structure against a schema built at its step,
and (when asked) the public schema against one built in a throwaway database."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Connection

from .. import planner, throwaway
from ..adoption import retired_ledger
from ..autogenerate import own_tables
from ..config import Config
from ..database import checkout, create_engine
from ..drift import CONNECTIONS, DiffResult, check
from ..identifiers import validate_schema_name
from ..migrations import MigrationSet, discover
from ..planner import Tables
from ..publicdrift import PublicDrift, differences
from ..tables import existing as _existing
from .base import session
from .migrate import migrate


def diff(
    config: Config, *, tenants: Sequence[str] | None = None, public: bool = False
) -> DiffResult:
    """Compare each tenant (or only ``tenants``) with a throwaway reference schema built
    at the same step from the tenant migration files; no table is locked.

    Tenants are grouped by step and catalog fingerprint; each group that differs from
    its reference is described once. The reference is dropped afterwards, also on
    failure. ``public`` compares the public schema too, with a reference built in a
    throwaway database (``publicdrift``). ``validate`` checks ledgers against files;
    this checks the schemas.
    """
    mset = discover(config.migrations_directory)
    only = [validate_schema_name(t) for t in tenants] if tenants else None
    with session(config, pool_size=1 + CONNECTIONS, purpose="mtm diff") as (engine, conn):
        tables = _existing(conn, config)
        result = check(engine, conn, config, mset.tenant, tables, only)
        if public:
            result.public = _public(config, conn, mset, tables)
    return result


def _public(config: Config, conn: Connection, mset: MigrationSet, tables: Tables) -> PublicDrift:
    """The public schema against the public migrations applied up to its step in a
    throwaway database."""
    plan = planner.public_plan(conn, config, mset, tables)
    if plan.problems:
        return PublicDrift(plan.applied, plan.last_applied, problem="; ".join(plan.problems))
    with throwaway.database(config) as scratch:
        ours = throwaway.mtm_tables(scratch)
        if plan.last_applied is not None:
            built = migrate(scratch, to=f"public:{plan.last_applied}")
            if not built.ok:
                failed = built.failures[0]
                return PublicDrift(
                    plan.applied,
                    plan.last_applied,
                    problem=f"the public migrations could not be built in a throwaway "
                    f"database: {failed.failed_migration} failed: {failed.error}",
                )
        exclude = own_tables(config, "public", ours) | {retired_ledger(config)}
        engine = create_engine(scratch, pool_size=1, purpose="mtm diff")
        try:
            with checkout(engine) as reference:
                found = differences(conn, reference, exclude)
        finally:
            engine.dispose()
    return PublicDrift(plan.applied, plan.last_applied, found)
