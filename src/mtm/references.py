"""The throwaway reference schemas ``diff`` builds, and the ones a killed diff left behind.

A reference is built at a step (the first k tenant migrations) and dropped when the
diff ends, also after a failure or Ctrl-C. Only a process killed outright (SIGKILL,
power loss) leaves one behind, and then it is removed by the next diff, which must be
able to prove the schema is a leftover and not another diff's reference in use:

* its name is ``REFERENCE_PREFIX`` and random hex, and its comment is ``MARKER``
  (written in the transaction that creates it);
* the diff that builds it holds a session advisory lock on its name
  (``locks.THROWAWAY_LOCK_CLASS``) from before the schema exists until it is dropped.
  A backend that dies releases its locks, so a schema whose lock the next diff can take
  has no live owner. A diff killed while its backend still runs a statement keeps the
  lock until the server notices: its reference stays until a later diff.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Sequence

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import clustercheck
from .config import Config
from .database import checkout, rollback_quietly, run_script
from .errors import MtmError
from .identifiers import quote_ident, quote_literal
from .ledger import ledger_ddl
from .locks import THROWAWAY_LOCK_CLASS
from .migrations import Migration
from .plan import plan_from_prefix
from .runner import Runner
from .steps import Framed, create_body, drop, frame

log = logging.getLogger("mtm.diff")

# The throwaway schema's name: this prefix and random hex (never a valid tenant's
# name by accident: tenants are registered, this schema never is).
REFERENCE_PREFIX = "mtm_reference_"
MARKER = "mtm diff reference schema: dropped when its diff ends, or by the next diff"


def _lock_key(schema: str) -> str:
    return f"{THROWAWAY_LOCK_CLASS}, hashtext({quote_literal(schema)})"


class References:
    """Throwaway reference schemas, one per step: ``build`` makes those missing, and
    leaving the ``with`` block drops every one, also after a failure or Ctrl-C.

    They are built on ``conn`` (its catalog caches are warm already), which holds each
    one's advisory lock, and dropped on it, or on a fresh connection from ``engine`` if
    it died (its locks died with it).
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
                self.conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_lock_key(schema)})")
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
            self.conn.exec_driver_sql(f"SELECT pg_advisory_lock({_lock_key(schema)})")
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


def remove_leftovers(conn: Connection, config: Config) -> list[str]:
    """Drop the reference schemas killed diffs left behind; their names.

    A schema is taken only if its name and comment are a reference's and no live
    backend holds its lock (this one takes it, drops the schema, and lets it go).
    """
    pattern = REFERENCE_PREFIX.replace("_", "\\_") + "%"
    found = conn.execute(
        sa.text(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE :pattern "
            "AND obj_description(oid, 'pg_namespace') = :marker ORDER BY nspname"
        ),
        {"pattern": pattern, "marker": MARKER},
    ).scalars()
    removed: list[str] = []
    for schema in list(found):
        key = _lock_key(schema)
        if not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar_one():
            continue  # a live diff's reference (or one whose backend has not ended yet)
        try:
            run_script(conn, drop(config, schema))
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
        removed.append(schema)
        log.info(
            "dropped %s, a reference schema left behind by a diff that was killed",
            schema,
            extra={"event": "diff.leftover", "schema": schema},
        )
    return removed


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
    """The reference schema, its marker and its ledger, framed like every change to a
    schema."""
    before = [
        f"CREATE SCHEMA {quote_ident(schema)}",
        f"COMMENT ON SCHEMA {quote_ident(schema)} IS {quote_literal(MARKER)}",
        ledger_ddl(config, schema),
    ]
    return frame(config, schema, "tenant", before=before)
