"""Drift: each tenant schema's real structure against a reference built at its step.

A tenant at step k (its ledger holds exactly the first k tenant migrations) should look
like a schema built fresh from those k files. ``check`` reads every tenant's catalog
fingerprint (``catalog.fingerprints``: one query, no table lock), groups tenants by
(step, fingerprint), and compares each group with a throwaway reference schema built at
that step; only a group whose fingerprint is not its reference's is described and
compared object by object (``catalog.compare``), once for the whole group.

The references are built first, in one throwaway schema taken from step to step (its
catalog kept in memory at each step present) and dropped afterwards, also on failure or
interruption. The tenants are then read in one REPEATABLE READ transaction, so the
steps, fingerprints and descriptions agree with one another even while a migration runs;
a tenant that moved to a step with no reference in between has it built, and is read
again.

mtm's own ledger table is left out of every comparison. Only tenant schemas are
compared: the public schema has no reference to be built beside it in the same database.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine

from . import catalog, planner
from .config import Config
from .database import checkout, rollback_quietly, run_script
from .errors import MtmError
from .ledger import ledger_ddl
from .migrations import Migration
from .plan import SchemaPlan, plan_from_prefix
from .planner import Tables
from .runner import Runner
from .schemacatalog import Difference, SchemaCatalog
from .steps import drop, frame

log = logging.getLogger("mtm.diff")

# The throwaway schema's name: this prefix and random hex (never a valid tenant's
# name by accident: tenants are registered, this schema never is).
REFERENCE_PREFIX = "mtm_reference_"


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
    references: dict[int, str] = field(default_factory=dict)  # step -> fingerprint

    @property
    def drifted(self) -> list[DriftGroup]:
        return [g for g in self.groups if not g.clean]

    @property
    def tenants_checked(self) -> int:
        return sum(len(g.tenants) for g in self.groups)

    @property
    def ok(self) -> bool:
        return not self.drifted and not self.not_compared


def check(
    engine: Engine,
    conn: Connection,
    config: Config,
    migrations: Sequence[Migration],
    tables: Tables,
    only: Sequence[str] | None,
) -> DiffResult:
    """Compare each registered tenant (``only`` those) with a reference at its step.

    ``conn`` reads; the references are built on a connection of their own from
    ``engine`` (and dropped on a fresh one if that connection died).
    """
    exclude = [config.migrations_table]
    rows = planner.tenant_rows(conn, config, tables, only)
    first = planner.plans(conn, config, list(migrations), "tenant", rows)
    wanted = {p.applied for p in first if not p.problems}
    references: dict[int, SchemaCatalog] = {}
    for _ in range(3):
        missing = sorted(wanted - references.keys())
        if missing:
            references.update(build_references(engine, config, migrations, missing, exclude))
        result, wanted = _read(conn, config, migrations, tables, only, references, exclude)
        if result is not None:
            return result
    raise MtmError(
        "the tenants' steps kept changing while diff read them (a migration is running): "
        "run 'mtm diff' again when it is done"
    )


def _read(
    conn: Connection,
    config: Config,
    migrations: Sequence[Migration],
    tables: Tables,
    only: Sequence[str] | None,
    references: dict[int, SchemaCatalog],
    exclude: list[str],
) -> tuple[DiffResult | None, set[int]]:
    """One consistent read of every tenant: steps, fingerprints and the descriptions of
    drifted groups. (None, steps) when a tenant is at a step with no reference yet."""
    with _snapshot(conn):
        rows = planner.tenant_rows(conn, config, tables, only)
        plans = planner.plans(conn, config, list(migrations), "tenant", rows)
        steps = {p.applied for p in plans if not p.problems}
        if not steps <= references.keys():
            return None, steps | references.keys()
        prints = catalog.fingerprints(conn, [p.schema for p in plans], exclude=exclude)
        result = DiffResult(references={k: references[k].fingerprint for k in sorted(steps)})
        members: dict[tuple[int, str], list[SchemaPlan]] = defaultdict(list)
        for p in plans:
            if p.problems:
                result.not_compared += [f"not compared: {problem}" for problem in p.problems]
            elif p.schema not in prints:
                result.not_compared.append(f"{p.schema}: not compared: the schema does not exist")
            else:
                members[(p.applied, prints[p.schema])].append(p)
        for (step, fp), group in sorted(members.items()):
            reference = references[step]
            differences: list[Difference] = []
            if fp != reference.fingerprint:
                actual = catalog.describe(conn, group[0].schema, exclude=exclude)
                differences = catalog.compare(reference, actual)
            tenants = tuple(p.schema for p in group)
            last = group[0].last_applied
            result.groups.append(DriftGroup(step, last, fp, tenants, tuple(differences)))
    return result, steps


@contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    """A read-only REPEATABLE READ transaction: every query inside sees one moment."""
    conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        yield
    finally:
        rollback_quietly(conn)


def build_references(
    engine: Engine,
    config: Config,
    migrations: Sequence[Migration],
    steps: Sequence[int],
    exclude: Sequence[str] = (),
) -> dict[int, SchemaCatalog]:
    """The catalog of a schema built fresh at each of ``steps``: one throwaway schema,
    tenant migrations applied in order up to each step in turn, described there, and
    dropped at the end, also when a migration fails or the run is interrupted."""
    reference = REFERENCE_PREFIX + secrets.token_hex(6)
    runner = Runner(config)
    out: dict[int, SchemaCatalog] = {}
    started = time.perf_counter()
    created = False
    try:
        with checkout(engine) as conn:
            run_script(conn, _create_sql(config, reference))
            created = True
            at = 0
            for step in sorted(steps):
                plan = plan_from_prefix(reference, "tenant", list(migrations[:step]), at)
                applied = runner.apply_plan(conn, plan, None)
                if applied.error is not None:
                    raise MtmError(
                        f"the reference schema for step {step} could not be built: "
                        f"{applied.failed_migration} failed: {applied.error}"
                    )
                at = step
                out[step] = catalog.describe(conn, reference, exclude=exclude)
    finally:
        if created:
            _drop(engine, config, reference)
    duration_ms = round(1000 * (time.perf_counter() - started), 3)
    log.info(
        "built references at %d step(s) in %sms",
        len(out),
        duration_ms,
        extra={"event": "diff.references", "steps": sorted(out), "duration_ms": duration_ms},
    )
    return out


def _create_sql(config: Config, schema: str) -> list[str]:
    """The reference schema and its ledger, framed like every change to a schema."""
    before = [f'CREATE SCHEMA "{schema}"', ledger_ddl(config, schema)]
    return frame(config, schema, "tenant", before=before).around([])


def _drop(engine: Engine, config: Config, schema: str) -> None:
    """Drop the reference (and its state row) on a fresh connection: the one that built
    it may have died with the failure being handled."""
    with checkout(engine) as conn:
        run_script(conn, drop(config, schema))
