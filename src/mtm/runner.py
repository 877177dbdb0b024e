"""Executing one schema's plan: each step in its own transaction, retried, re-planned.

A step is one migration applied to (or reverted from) one schema. A transactional step
is one round trip: the script ``steps.step`` frames (lock, settings, ledger check and
row, the migration, the state row, ``COMMIT``). If anything in it fails the transaction
rolls back, so every schema is always at a clean step. A Python migration runs between
the frame's two halves on the same connection; a migration that asks for no
transaction runs statement by statement, its ledger row written after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import steps
from .config import Config
from .database import rollback_quietly, run_script
from .failures import GONE, LEDGER_MOVED, RETRYABLE, StepError, sqlstate, step_error
from .keys import default
from .locks import hold_schema, release_schema
from .migrations import Migration, Namespace, StepContext
from .plan import SchemaPlan, fingerprint
from .progress import NoProgress, Progress
from .reference import note_plain, register_op
from .registry import is_registered
from .results import SchemaResult
from .sqlrun import driver
from .steps import Direction, Timeouts
from .txguard import transaction_kept

log = logging.getLogger("mtm.step")

Replanner = Callable[[Connection, str, Namespace], SchemaPlan]


@dataclass
class Settings:
    lock_timeout: str | None = default("lock_timeout")
    statement_timeout: str | None = default("statement_timeout")
    retries: int = default("retries")
    retry_delay: float = 0.5

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(self.lock_timeout, self.statement_timeout)


class Runner:
    """Applies and reverts migrations in one schema at a time, on a given connection."""

    def __init__(
        self,
        config: Config,
        settings: Settings | None = None,
        progress: Progress | None = None,
        replan: Replanner | None = None,
    ) -> None:
        self.config = config
        self.settings = settings or Settings(
            config.lock_timeout, config.statement_timeout, config.retries
        )
        self.progress: Progress = progress or NoProgress()
        self.replan = replan

    # --- one step ------------------------------------------------------------------

    def step(
        self,
        conn: Connection,
        schema: str,
        namespace: Namespace,
        migration: Migration,
        which: Direction,
        tenant: str | None,
        expected: str | None = None,
    ) -> None:
        """Apply (``up``) or revert (``down``) one migration in one schema; raise StepError.

        ``expected`` is the fingerprint the schema's ledger must have when the step starts.
        """
        fields = {"schema": schema, "namespace": namespace, "migration": migration.name}
        log.info(
            "%s %s %s %s",
            "applying" if which == "up" else "reverting",
            migration.name,
            "to" if which == "up" else "from",
            schema,
            extra={"event": "step.start", "direction": which, **fields},
        )
        started = time.perf_counter()
        if migration.transactional:
            self._transactional(conn, schema, namespace, migration, which, tenant, expected)
        else:
            self._outside_transaction(conn, schema, namespace, migration, which, tenant, expected)
        if which == "up" and namespace == "public":
            note_plain(conn, migration)  # -- mtm:reference-table without Citus: a record
        duration_ms = round(1000 * (time.perf_counter() - started), 3)
        log.info(
            "%s %s %s %s in %sms",
            "applied" if which == "up" else "reverted",
            migration.name,
            "to" if which == "up" else "from",
            schema,
            duration_ms,
            extra={"event": "step.end", "direction": which, "duration_ms": duration_ms, **fields},
        )

    def _transactional(
        self,
        conn: Connection,
        schema: str,
        namespace: Namespace,
        migration: Migration,
        which: Direction,
        tenant: str | None,
        expected: str | None,
    ) -> None:
        framed = steps.step(
            self.config,
            schema,
            namespace,
            migration,
            which,
            timeouts=self.settings.timeouts,
            expected=expected,
        )

        def attempt() -> None:
            if migration.kind == "sql":
                run_script(conn, framed.around(steps.body(migration, which)))
            else:
                run_script(conn, framed.head)
                self.call_python(conn, migration, which, schema, namespace, tenant)
                run_script(conn, framed.tail)

        self._guarded(conn, schema, namespace, migration, attempt)

    def _outside_transaction(
        self,
        conn: Connection,
        schema: str,
        namespace: Namespace,
        migration: Migration,
        which: Direction,
        tenant: str | None,
        expected: str | None,
    ) -> None:
        """For CREATE INDEX CONCURRENTLY and friends: statements in autocommit, then the
        ledger row (written by up, deleted by down) in a transaction of its own, all under
        the schema's session-level lock. Such migrations should be idempotent (IF NOT
        EXISTS / IF EXISTS): a crash or a retry between their statements and the ledger
        runs them again."""
        cfg = self.config
        script = migration.up_sql if which == "up" else migration.down_sql or ""

        def attempt() -> None:
            try:
                if expected is not None:
                    run_script(conn, steps.outside_check(cfg, schema, namespace, expected))
                run_script(conn, steps.session_settings(schema, self.settings.timeouts))
                if migration.kind == "sql":
                    for statement in steps.split_statements(script):
                        driver(conn).execute(statement.encode("utf-8"), prepare=False)
                else:
                    self.call_python(conn, migration, which, schema, namespace, tenant)
                run_script(conn, steps.outside_record(cfg, schema, namespace, migration, which))
            finally:
                _quietly(conn, lambda: run_script(conn, steps.RESET_SETTINGS))

        # Held across retries too: between two tries no other command may change the schema.
        hold_schema(conn, schema)
        try:
            self._guarded(conn, schema, namespace, migration, attempt)
        finally:
            _quietly(conn, lambda: release_schema(conn, schema))

    def _guarded(
        self,
        conn: Connection,
        schema: str,
        namespace: Namespace,
        migration: Migration,
        attempt: Callable[[], None],
    ) -> None:
        """Run ``attempt`` with retries; any failure leaves no transaction open and
        becomes a StepError."""
        tries = 0
        while True:
            try:
                attempt()
                return
            except StepError:
                rollback_quietly(conn)
                raise
            except (psycopg.Error, sa.exc.DBAPIError) as exc:
                rollback_quietly(conn)
                if sqlstate(exc) in RETRYABLE and tries < self.settings.retries:
                    delay = self.settings.retry_delay * (2**tries)
                    tries += 1
                    log.warning(
                        "retrying %s in %s (attempt %d) in %gs: %s",
                        migration.name,
                        schema,
                        tries + 1,
                        delay,
                        sqlstate(exc),
                        extra={
                            "event": "step.retry",
                            "schema": schema,
                            "namespace": namespace,
                            "migration": migration.name,
                            "attempt": tries + 1,
                            "error": step_error(exc, migration).message,
                        },
                    )
                    time.sleep(delay)
                    continue
                if tries:
                    exc.add_note(f"(tried {tries + 1} times)")
                raise step_error(exc, migration, self.config.migrations_table, schema) from exc
            except (Exception, SystemExit) as exc:
                # SystemExit too: a migration calling sys.exit() fails its step, it does
                # not end the worker (or the command) as if all had gone well.
                rollback_quietly(conn)
                raise step_error(exc, migration) from exc

    def call_python(
        self,
        conn: Connection,
        migration: Migration,
        which: Direction,
        schema: str,
        namespace: Namespace,
        tenant: str | None,
    ) -> None:
        """Run a Python migration with Alembic's ``op`` on ``conn``, inside mtm's
        transaction; refuse one that ended that transaction itself."""
        # Imported here, on first use: Alembic (with Mako) is a fifth of the command
        # line's start-up, and runs without Python migrations never need it.
        from alembic.operations import Operations
        from alembic.runtime.migration import MigrationContext

        register_op()
        ctx = MigrationContext.configure(connection=conn)
        status = psycopg.pq.TransactionStatus
        inside = driver(conn).info.transaction_status == status.INTRANS
        step = StepContext(schema, namespace, tenant)
        if migration.transactional:
            with transaction_kept(conn):
                migration.call(which, Operations(ctx), step)
        else:
            migration.call(which, Operations(ctx), step)
        if inside and driver(conn).info.transaction_status == status.IDLE:
            raise StepError(
                migration.name,
                f"{migration.path.name} ended mtm's transaction itself (COMMIT or ROLLBACK in "
                f"a migration): what it did before that may be committed without the rest; "
                f"check schema {schema} and 'mtm validate', and give migrations that manage "
                "transactions 'transactional = False'",
            )

    # --- one schema --------------------------------------------------------------

    def apply_plan(
        self, conn: Connection, plan: SchemaPlan, tenant: str | None, worker: int = 0
    ) -> SchemaResult:
        """Apply a schema's pending migrations in order; stop at the first failure.

        A step refused because another command changed the ledger since planning
        (MTM01, or its row already there) makes the schema planned again, thrice at most.
        """
        result = SchemaResult(plan.schema, plan.namespace)
        started = time.perf_counter()
        replans = 0
        pending = list(plan.pending)
        pairs = list(plan.applied_pairs)
        while pending:
            migration = pending.pop(0)
            self.progress.step(worker, plan.schema, migration.name)
            try:
                self.step(
                    conn, plan.schema, plan.namespace, migration, "up", tenant, fingerprint(pairs)
                )
            except StepError as exc:
                moved = exc.sqlstate == LEDGER_MOVED or exc.already_applied
                if moved and self.replan is not None and replans < 3:
                    replans += 1
                    _log_schema(logging.INFO, "step.replan", plan, migration, exc.message)
                    fresh = self.replan(conn, plan.schema, plan.namespace)
                    if fresh.problems:
                        result.failed_migration = migration.name
                        result.error = "; ".join(fresh.problems)
                        _log_schema(logging.ERROR, "step.failed", plan, migration, result.error)
                        break
                    pending = list(fresh.pending)
                    pairs = list(fresh.applied_pairs)
                    continue
                gone = exc.sqlstate in GONE and tenant is not None
                if gone and not self._registered(conn, plan.schema):
                    result.dropped = True  # dropped while the run went on: nothing to do
                    _log_schema(logging.INFO, "tenant.gone", plan, migration, exc.message)
                    break
                result.failed_migration = migration.name
                result.error = exc.message
                _log_schema(logging.ERROR, "step.failed", plan, migration, exc.message)
                break
            result.applied.append(migration.name)
            pairs.append((migration.name, migration.checksum))
        result.seconds = time.perf_counter() - started
        self.progress.schema_done(worker, result)
        return result

    def _registered(self, conn: Connection, schema: str) -> bool:
        try:
            return is_registered(conn, self.config, schema)
        except sa.exc.DBAPIError:
            rollback_quietly(conn)
            return True

    def revert(
        self,
        conn: Connection,
        schema: str,
        namespace: Namespace,
        migrations: list[Migration],
        tenant: str | None,
        applied: Iterable[tuple[str, str]] | None = None,
    ) -> SchemaResult:
        """Revert ``migrations`` (newest first). With ``applied``, the (name, checksum)
        pairs the ledger held when the revert was planned, a step refuses (MTM01) if the
        ledger has changed since, rather than revert under a migration it did not see."""
        result = SchemaResult(schema, namespace)
        started = time.perf_counter()
        pairs = dict(applied) if applied is not None else None
        for migration in migrations:
            self.progress.step(0, schema, migration.name)
            expected = fingerprint(pairs.items()) if pairs is not None else None
            try:
                self.step(conn, schema, namespace, migration, "down", tenant, expected)
            except StepError as exc:
                result.failed_migration = migration.name
                result.error = exc.message
                if exc.sqlstate == LEDGER_MOVED:
                    result.error = (
                        f"the ledger of schema {schema} changed since down read it "
                        "(another command ran); nothing more was reverted, check "
                        "'mtm history' and run down again"
                    )
                log.error(
                    "reverting %s in %s failed: %s",
                    migration.name,
                    schema,
                    result.error,
                    extra={
                        "event": "step.failed",
                        "schema": schema,
                        "namespace": namespace,
                        "migration": migration.name,
                        "direction": "down",
                        "error": result.error,
                    },
                )
                break
            result.reverted.append(migration.name)
            if pairs is not None:
                pairs.pop(migration.name, None)
        result.seconds = time.perf_counter() - started
        self.progress.schema_done(0, result)
        return result


def _log_schema(level: int, event: str, plan: SchemaPlan, migration: Migration, error: str) -> None:
    log.log(
        level,
        "%s: %s in %s: %s",
        event,
        migration.name,
        plan.schema,
        error,
        extra={
            "event": event,
            "schema": plan.schema,
            "namespace": plan.namespace,
            "migration": migration.name,
            "direction": "up",
            "error": error,
        },
    )


def _quietly(conn: Connection, action: Callable[[], None]) -> None:
    """Clean-up after a step that must not hide the step's own error: on a connection
    that died under the step, the session's settings and locks died with it."""
    try:
        rollback_quietly(conn)
        action()
    except (psycopg.Error, sa.exc.DBAPIError):
        pass
