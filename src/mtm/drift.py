"""Drift: each tenant schema's real structure against a reference built at its step.

A tenant at step k (its ledger holds exactly the first k tenant migrations) should look
like a schema built fresh from those k files. ``check`` reads every tenant's catalog
fingerprint (``catalog.fingerprints``: one query, no table lock), groups tenants by
(step, fingerprint), and compares each group with a throwaway reference schema built at
that step; only a group whose fingerprint is not its reference's is described and
compared object by object (``catalog.compare``), once for the whole group.

The references are built first, one throwaway schema per step present (its SQL
migrations sent in one round trip, like a create), and dropped at the end, also on
failure or interruption (``references``; one a killed diff left behind is dropped by
the next). The tenants are then read in one REPEATABLE READ snapshot, their
fingerprints in the same query as the references' (split over ``CONNECTIONS``
connections that share the snapshot, ``catalogread``), so the steps, fingerprints and
descriptions agree with one another even while a migration runs; a tenant that moved
to a step with no reference in between has one built, and everything is read again.

mtm's own ledger table is left out of every comparison. The public schema has no
reference that can be built beside it in the same database: ``publicdrift`` compares it
with one built in a throwaway database, when asked (``diff --public``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import catalog, catalogread, planner
from .adoption import retired_ledger
from .config import Config
from .errors import MtmError
from .migrations import Migration
from .plan import SchemaPlan
from .planner import Tables
from .publicdrift import PublicDrift
from .references import References, remove_leftovers
from .schemacatalog import Difference, SchemaCatalog

# Connections that read the fleet's fingerprints at once (``catalogread``): two halve
# the time on a server with two free cores; more gained nothing measurable on two.
CONNECTIONS = 2


@dataclass(frozen=True)
class DriftGroup:
    """Tenants at the same step with the same structure, and how it differs from the
    reference built at that step (nothing when it does not)."""

    step: int
    migration: str | None  # the last tenant migration applied at this step
    fingerprint: str
    tenants: tuple[str, ...]
    differences: tuple[Difference, ...] = ()

    @property
    def clean(self) -> bool:
        return not self.differences


@dataclass
class DiffResult:
    """What ``diff`` found: the groups (clean and drifted) and the tenants it could not
    compare (ledger disagreeing with the files, no schema), each with the reason."""

    groups: list[DriftGroup] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # leftovers of killed diffs, dropped
    public: PublicDrift | None = None  # None: not asked (``diff --public``)
    references: dict[int, str] = field(default_factory=dict)  # step -> its fingerprint

    @property
    def drifted(self) -> list[DriftGroup]:
        return [g for g in self.groups if not g.clean]

    @property
    def tenants_checked(self) -> int:
        return sum(len(g.tenants) for g in self.groups)

    @property
    def ok(self) -> bool:
        public_ok = self.public is None or self.public.clean
        return not self.drifted and not self.not_compared and public_ok


def check(
    engine: Engine,
    conn: Connection,
    config: Config,
    migrations: Sequence[Migration],
    tables: Tables,
    only: Sequence[str] | None,
) -> DiffResult:
    """Compare each registered tenant (``only`` those) with a reference at its step.

    ``conn`` reads and builds the references; they are dropped on it or, if it died
    with a failure, on a fresh connection from ``engine``, which also lends the
    connections that read the fingerprints with ``conn``.
    """
    removed = remove_leftovers(conn, config)
    rows = planner.tenant_rows(conn, config, tables, only)
    first = planner.plans(conn, config, list(migrations), "tenant", rows)
    wanted = {p.applied for p in first if not p.problems}
    with References(engine, conn, config, migrations) as references:
        for _ in range(3):
            references.build(wanted)
            try:
                result, wanted = _read(
                    engine, conn, config, migrations, tables, only, references.schemas
                )
            except sa.exc.DBAPIError as error:
                if not _dropped_while_read(error):
                    raise
                continue
            if result is not None:
                result.removed = removed
                return result
    raise MtmError(
        "the tenants' steps kept changing while diff read them (a migration is running): "
        "run 'mtm diff' again when it is done"
    )


def _dropped_while_read(error: sa.exc.DBAPIError) -> bool:
    """Whether a catalog function failed on an object dropped after the snapshot began.

    The snapshot hides later changes from the catalog tables, but functions such as
    ``format_type`` look objects up as they are now: a tenant dropped meanwhile fails
    the read with "cache lookup failed" (SQLSTATE XX000), and a new snapshot will not
    see it at all.
    """
    return getattr(error.orig, "sqlstate", None) == "XX000" and "cache lookup failed" in str(
        error.orig
    )


def _read(
    engine: Engine,
    conn: Connection,
    config: Config,
    migrations: Sequence[Migration],
    tables: Tables,
    only: Sequence[str] | None,
    references: dict[int, str],
) -> tuple[DiffResult | None, set[int]]:
    """One consistent read of every tenant and reference: steps, fingerprints and the
    descriptions of drifted groups. (None, steps) when a tenant is at a step with no
    reference yet."""
    exclude = [config.migrations_table, retired_ledger(config)]
    with catalogread.snapshot(conn) as moment:
        rows = planner.tenant_rows(conn, config, tables, only)
        plans = planner.plans(conn, config, list(migrations), "tenant", rows)
        steps = {p.applied for p in plans if not p.problems}
        if not steps <= references.keys():
            return None, steps
        schemas = [p.schema for p in plans] + [references[k] for k in sorted(steps)]
        prints = catalogread.fingerprints(
            engine, conn, moment, schemas, exclude=exclude, connections=CONNECTIONS
        )
        result = DiffResult(references={k: prints[references[k]] for k in sorted(steps)})
        members: dict[tuple[int, str], list[SchemaPlan]] = defaultdict(list)
        for p in plans:
            if p.problems:
                result.not_compared += [f"not compared: {problem}" for problem in p.problems]
            elif p.schema not in prints:
                result.not_compared.append(f"{p.schema}: not compared: the schema does not exist")
            else:
                members[(p.applied, prints[p.schema])].append(p)
        described: dict[int, SchemaCatalog] = {}
        for (step, fp), group in sorted(members.items()):
            differences: list[Difference] = []
            if fp != result.references[step]:
                if step not in described:
                    described[step] = catalog.describe(conn, references[step], exclude=exclude)
                actual = catalog.describe(conn, group[0].schema, exclude=exclude)
                differences = catalog.compare(described[step], actual)
            tenants = tuple(p.schema for p in group)
            last = group[0].last_applied
            result.groups.append(DriftGroup(step, last, fp, tenants, tuple(differences)))
    return result, steps
