"""Drift: each tenant schema's real structure against a reference built at its step.

A tenant at step k (its ledger holds exactly the first k tenant migrations) should look
like a schema built fresh from those k files. ``check`` reads every tenant's catalog
fingerprint (``catalog.fingerprints``: one query, no table lock), groups tenants by
(step, fingerprint), and compares each group with a throwaway reference schema built at
that step; only a group whose fingerprint is not its reference's is described and
compared object by object (``catalog.compare``), once for the whole group.

The references are built first, one throwaway schema per step present (its SQL
migrations sent in one round trip, like a create), and dropped at the end, also on
failure or interruption. The tenants are then read in one REPEATABLE READ transaction,
their fingerprints in the same query as the references', so the steps, fingerprints and
descriptions agree with one another even while a migration runs; a tenant that moved
to a step with no reference in between has one built, and everything is read again.

mtm's own ledger table is left out of every comparison. Only tenant schemas are
compared: the public schema has no reference to be built beside it in the same database.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import catalog, clustercheck, planner
from .adoption import retired_ledger
from .config import Config
from .database import checkout, rollback_quietly, run_script
from .errors import MtmError
from .identifiers import quote_ident
from .ledger import ledger_ddl
from .migrations import Migration
from .plan import SchemaPlan, plan_from_prefix
from .planner import Tables
from .runner import Runner
from .schemacatalog import Difference, SchemaCatalog
from .steps import Framed, create_body, drop, frame

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
    references: dict[int, str] = field(default_factory=dict)  # step -> its fingerprint

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
    ``engine`` and dropped on a fresh one (the first may have died with a failure).
    """
    rows = planner.tenant_rows(conn, config, tables, only)
    first = planner.plans(conn, config, list(migrations), "tenant", rows)
    wanted = {p.applied for p in first if not p.problems}
    with References(engine, conn, config, migrations) as references:
        for _ in range(3):
            references.build(wanted)
            result, wanted = _read(conn, config, migrations, tables, only, references.schemas)
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
    references: dict[int, str],
) -> tuple[DiffResult | None, set[int]]:
    """One consistent read of every tenant and reference: steps, fingerprints and the
    descriptions of drifted groups. (None, steps) when a tenant is at a step with no
    reference yet."""
    exclude = [config.migrations_table, retired_ledger(config)]
    with _snapshot(conn):
        rows = planner.tenant_rows(conn, config, tables, only)
        plans = planner.plans(conn, config, list(migrations), "tenant", rows)
        steps = {p.applied for p in plans if not p.problems}
        if not steps <= references.keys():
            return None, steps
        schemas = [p.schema for p in plans] + [references[k] for k in sorted(steps)]
        prints = catalog.fingerprints(conn, schemas, exclude=exclude)
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


@contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    """A read-only REPEATABLE READ transaction: every query inside sees one moment."""
    conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        yield
    finally:
        rollback_quietly(conn)


class References:
    """Throwaway reference schemas, one per step: ``build`` makes those missing, and
    leaving the ``with`` block drops every one, also after a failure or Ctrl-C.

    They are built on ``conn`` (its catalog caches are warm already) and dropped on it,
    or on a fresh connection from ``engine`` if it died.
    """

    def __init__(
        self, engine: Engine, conn: Connection, config: Config, migrations: Sequence[Migration]
    ) -> None:
        self.engine, self.conn, self.config, self.migrations = engine, conn, config, migrations
        self.schemas: dict[int, str] = {}  # step -> schema, each made whole
        self._made: list[str] = []  # created (perhaps not yet whole): dropped at the end

    def __enter__(self) -> References:
        return self

    def __exit__(self, *exc: object) -> None:
        failed: BaseException | None = None
        for schema in self._made:
            try:
                self._drop(schema)
            except Exception as error:  # drop the others all the same, then say so
                failed = failed or error
        self._made.clear()
        self.schemas.clear()
        if failed is not None:
            raise failed

    def _drop(self, schema: str) -> None:
        rollback_quietly(self.conn)
        if not self.conn.invalidated and not self.conn.closed:
            try:
                run_script(self.conn, drop(self.config, schema))
                return
            except (psycopg.OperationalError, sa.exc.OperationalError):
                rollback_quietly(self.conn)  # the connection died: a fresh one below
        with checkout(self.engine) as fresh:
            run_script(fresh, drop(self.config, schema))

    def build(self, steps: Iterable[int]) -> None:
        """A reference at each step of ``steps`` that has none yet (on a Citus
        coordinator, a local schema: see ``clustercheck.keep_local``)."""
        clustercheck.keep_local(self.conn)
        for step in sorted(set(steps) - self.schemas.keys()):
            started = time.perf_counter()
            schema = REFERENCE_PREFIX + secrets.token_hex(6)
            self._made.append(schema)  # before it exists: dropped IF EXISTS
            _build(Runner(self.config), self.conn, schema, self.migrations[:step])
            self.schemas[step] = schema
            duration_ms = round(1000 * (time.perf_counter() - started), 3)
            log.info(
                "built reference %s at step %d in %sms",
                schema,
                step,
                duration_ms,
                extra={
                    "event": "diff.reference",
                    "schema": schema,
                    "step": step,
                    "duration_ms": duration_ms,
                },
            )


def _build(runner: Runner, conn: Connection, schema: str, migrations: Sequence[Migration]) -> None:
    """The reference schema with ``migrations`` applied: if all are SQL, with its ledger
    in one transaction and one round trip (as a create sends them), else (or to name
    the migration that failed) created first, then migrated step by step."""
    config = runner.config
    created = _created(config, schema)
    if all(m.kind == "sql" and m.transactional for m in migrations):
        body = [s for m in migrations for s in create_body(config, schema, m)]
        try:
            clustercheck.run_each(conn, created.around(body))
            return
        except (psycopg.Error, sa.exc.DBAPIError):
            rollback_quietly(conn)
    run_script(conn, created.around([]))
    plan = plan_from_prefix(schema, "tenant", list(migrations), 0)
    applied = runner.apply_plan(conn, plan, None)
    if applied.error is not None:
        raise MtmError(
            f"the reference schema for step {len(migrations)} could not be built: "
            f"{applied.failed_migration} failed: {applied.error}"
        )


def _created(config: Config, schema: str) -> Framed:
    """The reference schema and its ledger, framed like every change to a schema."""
    before = [f"CREATE SCHEMA {quote_ident(schema)}", ledger_ddl(config, schema)]
    return frame(config, schema, "tenant", before=before)
