"""The statuses of a whole fleet, cheap at 100,000 tenants.

Tenants at the same fingerprint stand at the same place, so their position (applied,
last applied, pending, problems) is worked out once per distinct fingerprint and shared
by their statuses (nothing changes a status once it is made). Only tenants whose
fingerprint matches no prefix of the files are planned from their ledgers, as before,
and a position whose problems name the schema is worked out per tenant.

``summary`` goes further for a fleet too large to list: the server counts the tenants
at each fingerprint, and only those at no prefix of the files are read by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .config import Config
from .ledger import tenant_fingerprints
from .migrations import Migration
from .plan import prefix_fingerprints, prefix_planner
from .planner import plans
from .results import SchemaStatus
from .sqlrun import Conn

# schema -> (name, domains), from the registry; empty when the caller shows neither.
Names = Mapping[str, tuple[str | None, tuple[str, ...]]]


def tenant_statuses(
    conn: Conn,
    config: Config,
    migrations: list[Migration],
    rows: Sequence[tuple[str, str | None]],
    names: Names,
) -> list[SchemaStatus]:
    """A status per (schema, fingerprint) row, in the rows' order."""
    prefixes = prefix_fingerprints(migrations)
    from_prefix = prefix_planner("tenant", migrations)
    shared: dict[int, SchemaStatus | None] = {}  # None: its problems name each schema
    out: list[SchemaStatus | None] = []
    slow: list[tuple[int, str, str | None]] = []
    for schema, fp in rows:
        k = prefixes.get(fp) if fp is not None else None
        if k is None:
            slow.append((len(out), schema, fp))
            out.append(None)
            continue
        name, domains = names.get(schema, (None, ()))
        if k not in shared:
            plan = from_prefix(schema, k)
            shared[k] = None if plan.problems else SchemaStatus.of(plan)
        at = shared[k]
        if at is None:
            out.append(SchemaStatus.of(from_prefix(schema, k), name, domains))
        else:
            out.append(
                SchemaStatus(
                    schema,
                    at.namespace,
                    name,
                    domains,
                    at.applied,
                    at.total,
                    at.last_applied,
                    at.pending,
                    at.problems,
                )
            )
    if slow:
        planned = plans(conn, config, migrations, "tenant", [(s, fp) for _, s, fp in slow])
        for (i, schema, _), plan in zip(slow, planned, strict=True):
            out[i] = SchemaStatus.of(plan, *names.get(schema, (None, ())))
    return [s for s in out if s is not None]


def summary(
    conn: Conn,
    config: Config,
    migrations: list[Migration],
    counts: Sequence[tuple[str | None, int]],
) -> list[tuple[SchemaStatus, int]]:
    """Each position with how many tenants stand there, from ``ledger.fingerprint_counts``:
    a status per prefix of the files (its schema left empty), and the tenants at any other
    fingerprint (or none) one by one, as ``tenant_statuses`` makes them (count 1 each,
    so that their problems are shown by name)."""
    prefixes = prefix_fingerprints(migrations)
    from_prefix = prefix_planner("tenant", migrations)
    out: list[tuple[SchemaStatus, int]] = []
    apart: list[str | None] = []
    for fp, count in counts:
        k = prefixes.get(fp) if fp is not None else None
        plan = from_prefix("", k) if k is not None else None
        if plan is None or plan.problems:
            apart.append(fp)
        else:
            out.append((SchemaStatus.of(plan), count))
    if apart:
        rows = tenant_fingerprints(conn, config, at=apart)
        out += [(s, 1) for s in tenant_statuses(conn, config, migrations, rows, {})]
    return out
