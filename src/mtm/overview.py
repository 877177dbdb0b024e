"""What ``mtm tenants`` shows of each tenant: its registry row with the primary domain,
where its ledger stands (from the state summary) and the role mtm made for it.

Three queries whatever the number of tenants: the registry, the state summary, and
the marked roles among the names the tenants' roles would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .config import Config
from .ledger import state_ref
from .registry import Tenant, list_tenants
from .roles import role_for, role_marker
from .schemas import current_database


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


def overview(conn: Connection, config: Config, match: str | None = None) -> list[TenantOverview]:
    """Every registered tenant (``match``: those whose name matches the glob)."""
    tenants = matching(list_tenants(conn, config), match)
    if not tenants:
        return []
    states = {
        r[0]: (int(r[1]), r[2])
        for r in conn.execute(
            sa.text(
                f"SELECT schema_name, applied, last_migration FROM {state_ref(config)} "
                "WHERE schema_name = ANY(:s)"
            ),
            {"s": [t.schema for t in tenants]},
        ).all()
    }
    names = {t.schema: role_for(config, t.schema) for t in tenants}
    comments: dict[str, str | None] = {
        r[0]: r[1]
        for r in conn.execute(
            sa.text(
                "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
                "WHERE rolname = ANY(:r)"
            ),
            {"r": list(names.values())},
        ).all()
    }
    database = current_database(conn)
    out = []
    for t in tenants:
        applied, last = states.get(t.schema, (0, None))
        role = names[t.schema]
        mine = comments.get(role, None) == role_marker(database, t.schema)
        out.append(TenantOverview(t, applied, last, role if mine else None))
    return out
