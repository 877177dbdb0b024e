"""How the tenant listings look: ``mtm tenants`` and ``mtm domains list``, as tables
and as the plain data their ``--json`` prints.

A person cannot read 10,000 rows (and rendering them took seconds), so ``mtm tenants``
shows the first ``PAGE`` and a line saying how many more there are and how to see them
all (``--all``, or ``--json`` for machines)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .domains import Domain
from .overview import TenantOverview
from .words import plural

if TYPE_CHECKING:  # rich is imported where a table is drawn; --json needs none of it
    from rich.table import Table

PAGE = 50  # rows of `mtm tenants` without --all


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def tenants_table(items: list[TenantOverview], *, limit: int | None = None) -> Table:
    """A row per tenant, the first ``limit`` of them when one is given."""
    from rich.table import Table

    table = Table()
    for col in ("schema", "name", "primary domain", "domains", "applied", "role", "created"):
        table.add_column(col, overflow="fold")
    for item in items[:limit]:
        t = item.tenant
        step = f"{item.applied}: {item.last_migration}" if item.last_migration else "0"
        others = [d for d in t.domains if d != t.primary_domain]
        table.add_row(
            t.schema,
            t.name or "",
            t.primary_domain or "-",
            ", ".join(others),
            step,
            item.role or "-",
            _when(t.created_at),
        )
    return table


def tenants_more(total: int, shown: int) -> str | None:
    """The line under a cut listing: how many were left out and how to see them."""
    if total <= shown:
        return None
    return (
        f"... and {plural(total - shown, 'more tenant')} ({total:,} in all): "
        "--all lists every one, --json prints them all as JSON"
    )


def tenants_data(items: list[TenantOverview]) -> list[dict[str, Any]]:
    return [
        {
            "schema": i.tenant.schema,
            "name": i.tenant.name,
            "domains": list(i.tenant.domains),
            "primary_domain": i.tenant.primary_domain,
            "applied": i.applied,
            "last_migration": i.last_migration,
            "role": i.role,
            "created_at": i.tenant.created_at,
        }
        for i in items
    ]


def domains_table(items: list[Domain]) -> Table:
    from rich.table import Table

    table = Table()
    for col in ("domain", "tenant", "primary", "added"):
        table.add_column(col, overflow="fold")
    for d in items:
        table.add_row(d.domain, d.schema, "yes" if d.primary else "", _when(d.created_at))
    return table


def domains_data(items: list[Domain]) -> list[dict[str, Any]]:
    return [
        {"domain": d.domain, "schema": d.schema, "primary": d.primary, "created_at": d.created_at}
        for d in items
    ]
