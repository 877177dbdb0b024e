"""A tenant's domains after its create: adding, removing, the primary one, listing.

Every tenant with domains has exactly one primary domain (a unique partial index on
the domain table says so): the first one given at create, or the first one added to a
tenant that had none; ``--primary`` moves it. Removing the primary promotes the
tenant's oldest remaining domain (then by name), so a tenant never has domains without
a primary. Each change is one transaction under the tenant's schema lock, and checks
in it that the tenant is still registered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from . import sqlrun
from .config import Config
from .identifiers import quote_literal
from .locks import schema_lock_sql
from .registry import domain_ref, expect_registered_sql, touch_sql
from .sqlrun import Conn


@dataclass(frozen=True)
class Domain:
    """A row of the domain table."""

    domain: str
    schema: str
    primary: bool
    created_at: datetime | None = None


def list_domains(conn: Conn, config: Config, schema: str | None = None) -> list[Domain]:
    """Every domain (or ``schema``'s), by tenant, its primary first, then by name."""
    where = "WHERE schema_name = %(s)s " if schema is not None else ""
    rows = sqlrun.rows(
        conn,
        f"SELECT domain, schema_name, is_primary, created_at FROM {domain_ref(config)} "
        f"{where}ORDER BY schema_name, is_primary DESC, domain",
        {"s": schema},
    )
    return [Domain(r[0], r[1], r[2], r[3]) for r in rows]


def owners(conn: Conn, config: Config, hosts: Sequence[str]) -> dict[str, str]:
    """Which tenant owns each of ``hosts`` (normalised), for those that are taken."""
    rows = sqlrun.rows(
        conn,
        f"SELECT domain, schema_name FROM {domain_ref(config)} WHERE domain = ANY(%(h)s)",
        {"h": list(hosts)},
    )
    return {r[0]: r[1] for r in rows}


def _array(hosts: Sequence[str]) -> str:
    return f"ARRAY[{', '.join(quote_literal(h) for h in hosts)}]::text[]"


def _has_primary(config: Config, schema: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM {domain_ref(config)} "
        f"WHERE schema_name = {quote_literal(schema)} AND is_primary)"
    )


def add_sql(
    config: Config, schema: str, new: Sequence[str], first: str, *, primary: bool
) -> list[str]:
    """The transaction that gives ``schema`` the ``new`` domains; ``first`` (the first
    host named, new or already the tenant's) becomes primary with ``primary``, or when
    the tenant has none. A host another tenant took meanwhile fails the insert."""
    d, s = domain_ref(config), quote_literal(schema)
    out = ["BEGIN", schema_lock_sql(schema), expect_registered_sql(config, schema)]
    if new:
        values = ", ".join(f"({quote_literal(h)}, {s}, false)" for h in new)
        out.append(f"INSERT INTO {d} (domain, schema_name, is_primary) VALUES {values}")
    if primary:
        out.append(
            f"UPDATE {d} SET is_primary = false WHERE schema_name = {s} AND is_primary "
            f"AND domain <> {quote_literal(first)}"
        )
    out += [
        f"UPDATE {d} SET is_primary = true WHERE schema_name = {s} "
        f"AND domain = {quote_literal(first)} AND NOT {_has_primary(config, schema)}",
        touch_sql(config, schema),
        "COMMIT",
    ]
    return out


def remove_sql(config: Config, schema: str, hosts: Sequence[str]) -> list[str]:
    """The transaction that takes ``hosts`` from ``schema``; if the primary goes, the
    oldest remaining domain (then by name) becomes primary."""
    d, s = domain_ref(config), quote_literal(schema)
    return [
        "BEGIN",
        schema_lock_sql(schema),
        expect_registered_sql(config, schema),
        f"DELETE FROM {d} WHERE schema_name = {s} AND domain = ANY({_array(hosts)})",
        f"UPDATE {d} SET is_primary = true WHERE domain = (SELECT domain FROM {d} "
        f"WHERE schema_name = {s} ORDER BY created_at, domain LIMIT 1) "
        f"AND NOT {_has_primary(config, schema)}",
        touch_sql(config, schema),
        "COMMIT",
    ]
