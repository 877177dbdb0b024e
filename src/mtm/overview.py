"""What ``mtm tenants`` shows of each tenant: its registry row with the primary domain,
where its ledger stands (from the state summary) and the role mtm made for it.

Three queries whatever the number of tenants: the registry, the state summary, and
the roles marked as tenant roles of this database; a page (``overview_page``) reads
only its own tenants' rows, and one more query counts them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from . import sqlrun
from .config import Config
from .ledger import state_ref
from .registry import Tenant, first_schemas, list_tenants
from .roles import role_for, role_marker
from .schemas import current_database
from .sqlrun import Conn


@dataclass(frozen=True)
class TenantOverview:
    """A tenant as ``mtm tenants`` lists it."""

    tenant: Tenant
    applied: int  # migrations recorded in its ledger
    last_migration: str | None  # the newest of them (its applied step)
    role: str | None  # its tenant role, if mtm made one for it in this database


def matching(tenants: list[Tenant], match: str | None) -> list[Tenant]:
    """The tenants whose schema name matches the shell glob ``match`` (all without)."""
    if match is None:
        return tenants
    return [t for t in tenants if fnmatchcase(t.schema, match)]


def overview(conn: Conn, config: Config, match: str | None = None) -> list[TenantOverview]:
    """Every registered tenant (``match``: those whose name matches the glob)."""
    return _overviews(conn, config, matching(list_tenants(conn, config), match), match is None)


def overview_page(conn: Conn, config: Config, limit: int) -> tuple[list[TenantOverview], int]:
    """The first ``limit`` tenants by name, and how many there are: what a page of
    ``mtm tenants`` shows, read alone (at 100,000 tenants, 50 rows, not 100,000)."""
    schemas, total = first_schemas(conn, config, limit)
    tenants = list_tenants(conn, config, schemas) if schemas else []
    return _overviews(conn, config, tenants, False), total


def _overviews(
    conn: Conn, config: Config, tenants: list[Tenant], every: bool
) -> list[TenantOverview]:
    """``tenants`` with their states and roles; ``every``: they are all the tenants."""
    if not tenants:
        return []
    states = _states(conn, config, tenants, every)
    roles = _marked_roles(conn, config, {t.schema for t in tenants})
    out = []
    for t in tenants:
        applied, last = states.get(t.schema, (0, None))
        out.append(TenantOverview(t, applied, last, roles.get(t.schema)))
    return out


def _states(
    conn: Conn, config: Config, tenants: list[Tenant], every: bool
) -> dict[str, tuple[int, str | None]]:
    """The state rows of ``tenants``: all rows when they are every tenant (sending
    10,000 names to match costs more than the rows of the few schemas that are not
    tenants)."""
    sql = f"SELECT schema_name, applied, last_migration FROM {state_ref(config)}"
    if every:
        rows = sqlrun.rows(conn, sql)
    else:
        where = " WHERE schema_name = ANY(%(s)s)"
        rows = sqlrun.rows(conn, sql + where, {"s": [t.schema for t in tenants]})
    return {r[0]: (int(r[1]), r[2]) for r in rows}


def _marked_roles(conn: Conn, config: Config, schemas: set[str]) -> dict[str, str]:
    """Schema -> its tenant role, for the roles mtm made in this database: named as
    ``role_for`` names the schema's role and marked with ``role_marker``. Found by their
    marks, so no name is worked out for the (many) tenants without a role."""
    start = role_marker(current_database(conn), "")
    out: dict[str, str] = {}
    for name, comment in sqlrun.rows(
        conn,
        "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
        "WHERE starts_with(shobj_description(oid, 'pg_authid'), %(m)s)",
        {"m": start},
    ):
        schema = comment[len(start) :]
        if schema in schemas and name == role_for(config, schema):
            out[schema] = name
    return out
