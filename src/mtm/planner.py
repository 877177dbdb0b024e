"""From the database to plans: reads ledgers and state rows, asks ``plan`` what to do.

``plan.py`` is the pure logic; this module is where it meets the database. A tenant
whose state fingerprint matches a prefix of the files is planned from that number
alone; only the others have their ledgers read (in batches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .config import Config
from .errors import TenantError
from .ledger import (
    PUBLIC,
    existing_ledgers,
    read_history,
    read_ledgers,
    tenant_fingerprints,
)
from .migrations import Migration, MigrationSet, Namespace
from .plan import (
    SchemaPlan,
    plan_from_ledger,
    prefix_fingerprints,
    prefix_planner,
    revert_range,
    stop_at,
)
from .registry import registered_among
from .sqlrun import Conn

if TYPE_CHECKING:
    from .runner import Replanner

# Which of mtm's public tables exist: {"registry": bool, "state": bool, "ledger": bool}.
Tables = Mapping[str, bool]


def tenant_rows(
    conn: Conn,
    config: Config,
    tables: Tables,
    only: Sequence[str] | None,
    not_at: str | None = None,
) -> list[tuple[str, str | None]]:
    """(schema, fingerprint) of the registered tenants (``only`` those: each must be
    registered); ``not_at`` keeps those not at that fingerprint."""
    if not tables["registry"]:
        if only:
            raise TenantError(f"no tenant {only[0]!r} is registered")
        return []
    if only:
        known = registered_among(conn, config, only)
        missing = [s for s in only if s not in known]
        if missing:
            raise TenantError(f"no tenant {missing[0]!r} is registered")
    return tenant_fingerprints(conn, config, only=only, not_at=not_at, with_state=tables["state"])


def plans(
    conn: Conn,
    config: Config,
    migrations: list[Migration],
    namespace: Namespace,
    rows: Sequence[tuple[str, str | None]],
    *,
    allow_out_of_order: bool = False,
) -> list[SchemaPlan]:
    """Plans from fingerprints where they match a prefix of the files, else from ledgers."""
    prefixes = prefix_fingerprints(migrations)
    from_prefix = prefix_planner(namespace, migrations)
    out: dict[str, SchemaPlan] = {}
    slow: list[str] = []
    for schema, fp in rows:
        k = prefixes.get(fp) if fp is not None else None
        if k is None:
            slow.append(schema)
        else:
            out[schema] = from_prefix(schema, k)
    if slow:
        ledgers = read_ledgers(conn, config, slow)
        for schema in slow:
            out[schema] = plan_from_ledger(
                schema,
                namespace,
                migrations,
                ledgers[schema],
                allow_out_of_order=allow_out_of_order,
            )
    return [out[s] for s, _ in rows]


def public_plan(
    conn: Conn,
    config: Config,
    mset: MigrationSet,
    tables: Tables,
    *,
    allow_out_of_order: bool = False,
) -> SchemaPlan:
    """The public schema's plan (everything pending if its ledger does not exist yet)."""
    ledger = read_ledgers(conn, config, [PUBLIC])[PUBLIC] if tables["ledger"] else []
    return plan_from_ledger(
        PUBLIC, "public", mset.public, ledger, allow_out_of_order=allow_out_of_order
    )


def replanner(
    config: Config,
    mset: MigrationSet,
    allow_out_of_order: bool,
    target: tuple[Namespace, str] | None = None,
) -> Replanner:
    """Plans one schema again from its ledger, for a step that found the ledger moved
    (still stopping at ``target``, the namespace and name of ``migrate --to``)."""

    def replan(conn: Conn, schema: str, namespace: Namespace) -> SchemaPlan:
        ledger = read_ledgers(conn, config, [schema])[schema]
        fresh = plan_from_ledger(
            schema, namespace, mset.of(namespace), ledger, allow_out_of_order=allow_out_of_order
        )
        if target is None:
            return fresh
        return stop_at(fresh, target[1]) if target[0] == namespace else replace(fresh, pending=[])

    return replan


@dataclass
class Revert:
    """What ``down`` will do to one schema: these migrations, newest first, from a
    ledger that held ``applied`` when it was read."""

    schema: str
    namespace: Namespace
    migrations: list[Migration]
    applied: list[tuple[str, str]]


def reverts(
    conn: Conn,
    config: Config,
    mset: MigrationSet,
    targets: Sequence[tuple[str, Namespace]],
    *,
    steps: int | None,
    to: str | None,
) -> tuple[list[Revert], list[str]]:
    """The reverts of ``targets`` and the problems that forbid them: each migration in
    the range must still have its file, unedited, with a down."""
    present = existing_ledgers(conn, config, [s for s, _ in targets])
    work: list[Revert] = []
    problems: list[str] = []
    for schema, ns in targets:
        applied = list(reversed(read_history(conn, config, schema))) if schema in present else []
        try:
            names = revert_range([a.name for a in applied], steps=steps, to=to)
        except ValueError as exc:
            problems.append(f"{schema}: {exc}")
            continue
        checksums = {a.name: a.checksum for a in applied}
        migrations = []
        for name in names:
            m = mset.find(ns, name)
            if m is None:
                problems.append(f"{schema}: migration {name} has no file to revert it with")
            elif m.checksum != checksums[name]:
                problems.append(f"{schema}: migration {name} was edited after it was applied")
            elif not m.has_down:
                problems.append(f"{schema}: migration {name} has no down")
            else:
                migrations.append(m)
        work.append(Revert(schema, ns, migrations, [(a.name, a.checksum) for a in applied]))
    return work, problems
