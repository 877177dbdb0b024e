"""Executes plans: one transaction per step, per-schema locks, N workers, clean failures.

A step is one migration applied to (or reverted from) one schema. A transactional step
is one round trip: ``BEGIN``, the schema's advisory lock, ``SET LOCAL`` of search_path
and timeouts, the ledger row, the migration, the state row, ``COMMIT``. If anything in
it fails the transaction rolls back, so every schema is always at a clean step.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg
import sqlalchemy as sa
from psycopg import errors as pgerrors
from sqlalchemy.engine import Connection, Engine

from . import sqlscript
from .config import Config, mask_url
from .database import driver, rollback_quietly, run_script, schema_lock_sql
from .identifiers import quote_ident, quote_literal
from .ledger import (
    delete_sql,
    finish_sql,
    insert_sql,
    ledger_ddl,
    ledger_ref,
    state_upsert_sql,
)
from .migrations import Migration, Namespace, StepContext
from .plan import SchemaPlan, fingerprint
from .registry import domain_ref, tenant_ref
from .txguard import transaction_kept

# SQLSTATEs worth another try: lock_not_available, deadlock_detected, serialization_failure.
RETRYABLE = {"55P03", "40P01", "40001"}
# Raised by a step whose schema's ledger is not what the plan expected.
LEDGER_MOVED = "MTM01"
# invalid_schema_name, undefined_table: the schema (or its ledger) is gone.
GONE = {"3F000", "42P01"}

Replanner = Callable[[Connection, str, Namespace], SchemaPlan]


@dataclass
class SchemaResult:
    """What happened to one schema in a run."""

    schema: str
    namespace: Namespace
    applied: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    failed_migration: str | None = None
    error: str | None = None
    dropped: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class Progress(Protocol):
    """What a display is told while a run goes on (called from worker threads)."""

    def begin(self, schemas: int, steps: int) -> None: ...
    def step(self, worker: int, schema: str, migration: str) -> None: ...
    def schema_done(self, worker: int, result: SchemaResult) -> None: ...
    def end(self) -> None: ...


class NoProgress:
    def begin(self, schemas: int, steps: int) -> None:
        pass

    def step(self, worker: int, schema: str, migration: str) -> None:
        pass

    def schema_done(self, worker: int, result: SchemaResult) -> None:
        pass

    def end(self) -> None:
        pass


class StepError(Exception):
    """A failed step: which migration, and the database's (or Python's) words."""

    def __init__(
        self,
        migration: str | None,
        message: str,
        sqlstate: str | None = None,
        already_applied: bool = False,
    ) -> None:
        super().__init__(message)
        self.migration = migration
        self.message = message
        self.sqlstate = sqlstate
        self.already_applied = already_applied


def describe_error(exc: BaseException, migration: Migration | None = None) -> str:
    """One line (two at most) saying what went wrong, without secrets."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    if isinstance(orig, psycopg.Error):
        diag = orig.diag
        text = diag.message_primary or str(orig).strip().splitlines()[0]
        parts = [text]
        if diag.message_detail:
            parts.append(f"DETAIL: {diag.message_detail}")
        if diag.message_hint:
            parts.append(f"HINT: {diag.message_hint}")
        state = f" [SQLSTATE {orig.sqlstate}]" if orig.sqlstate else ""
        return mask_url(" ".join(parts)) + state
    where = ""
    if migration is not None and migration.kind == "python":
        for frame in traceback.extract_tb(exc.__traceback__):
            if Path(frame.filename) == migration.path:
                where = f" (at {migration.path.name}:{frame.lineno})"
    return mask_url(f"{type(exc).__name__}: {exc}") + where


def _sqlstate(exc: BaseException) -> str | None:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return getattr(orig, "sqlstate", None)


def _is_ledger_conflict(exc: BaseException, config: Config, schema: str) -> bool:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    if not isinstance(orig, pgerrors.UniqueViolation):
        return False
    diag = orig.diag
    return diag.schema_name == schema and diag.table_name == config.migrations_table


def split_statements(sql: str) -> list[str]:
    """Statements of a script, for migrations that run outside a transaction, split by
    PostgreSQL's own grammar."""
    return [statement.text for statement in sqlscript.split(sql)]


@dataclass
class Settings:
    lock_timeout: str | None = "5s"
    statement_timeout: str | None = None
    retries: int = 2
    retry_delay: float = 0.5


class Runner:
    """Applies and reverts migrations in schemas, sequentially or on N workers."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        settings: Settings | None = None,
        progress: Progress | None = None,
        replan: Replanner | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.settings = settings or Settings(
            config.lock_timeout, config.statement_timeout, config.retries
        )
        self.progress: Progress = progress or NoProgress()
        self.replan = replan

    # --- SQL pieces --------------------------------------------------------------

    def _locals(self, schema: str) -> str:
        parts = [f"SET LOCAL search_path TO {quote_ident(schema)}"]
        if self.settings.lock_timeout:
            parts.append(f"SET LOCAL lock_timeout = {quote_literal(self.settings.lock_timeout)}")
        if self.settings.statement_timeout:
            parts.append(
                f"SET LOCAL statement_timeout = {quote_literal(self.settings.statement_timeout)}"
            )
        return ";\n".join(parts)

    def _begin(self, schema: str) -> str:
        return (
            f"BEGIN;\n{schema_lock_sql(schema)};\n"
            f"SET LOCAL standard_conforming_strings = on;\n{self._locals(schema)};\n"
        )

    def _expect_sql(self, schema: str, expected: str) -> str:
        """Fail the step (SQLSTATE MTM01) unless the ledger is exactly what was planned.

        Runs under the schema's lock, so a concurrent down, create or migrate of the same
        schema can never make a step apply on top of a state it was not planned for.
        """
        ledger = ledger_ref(self.config, schema)
        return (
            "DO $mtm$ BEGIN IF (SELECT md5(coalesce(string_agg(name || ':' || checksum, ',' "
            f"ORDER BY name COLLATE \"C\"), '')) FROM {ledger}) IS DISTINCT FROM "
            f"{quote_literal(expected)} THEN RAISE EXCEPTION "
            f"'the ledger of schema {schema} changed during the run' "
            f"USING ERRCODE = '{LEDGER_MOVED}'; END IF; END $mtm$;\n"
        )

    def _no_invalid_indexes_sql(self, schema: str) -> str:
        """Fail (SQLSTATE MTM02) if the schema has an INVALID index.

        A CREATE INDEX CONCURRENTLY that failed or was interrupted leaves one behind, and
        IF NOT EXISTS then skips it: without this check a no-transaction migration run
        again would be recorded as applied while its index is unusable.
        """
        return (
            "DO $mtm$ DECLARE bad text; BEGIN SELECT string_agg(c.relname, ', ') INTO bad "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = {quote_literal(schema)} AND NOT i.indisvalid; "
            "IF bad IS NOT NULL THEN RAISE EXCEPTION "
            f"'schema {schema} has an INVALID index: %', bad USING ERRCODE = 'MTM02', "
            "HINT = 'a CREATE INDEX CONCURRENTLY failed or was interrupted; "
            "drop the index and run mtm migrate again'; END IF; END $mtm$;\n"
        )

    # --- one step ------------------------------------------------------------------

    def _with_retries(self, fn: Callable[[], None], conn: Connection) -> None:
        attempt = 0
        while True:
            try:
                fn()
                return
            except (psycopg.Error, sa.exc.DBAPIError) as exc:
                rollback_quietly(conn)
                if _sqlstate(exc) in RETRYABLE and attempt < self.settings.retries:
                    time.sleep(self.settings.retry_delay * (2**attempt))
                    attempt += 1
                    continue
                if attempt:
                    exc.add_note(f"(tried {attempt + 1} times)")
                raise

    def apply_step(
        self,
        conn: Connection,
        schema: str,
        namespace: Namespace,
        migration: Migration,
        tenant: str | None,
        expected: str | None = None,
    ) -> None:
        """Apply one migration to one schema in its own transaction (or none, if it asks).

        ``expected`` is the fingerprint the schema's ledger must have when the step starts.
        """
        self._step(conn, schema, namespace, migration, tenant, expected, "up")

    def revert_step(
        self,
        conn: Connection,
        schema: str,
        namespace: Namespace,
        migration: Migration,
        tenant: str | None,
        expected: str | None = None,
    ) -> None:
        """Revert one applied migration and remove its ledger row, in one transaction.

        ``expected`` is the fingerprint the schema's ledger must have when the step starts.
        """
        self._step(conn, schema, namespace, migration, tenant, expected, "down")

    def _step(
        self,
        conn: Connection,
        schema: str,
        namespace: Namespace,
        migration: Migration,
        tenant: str | None,
        expected: str | None,
        which: Literal["up", "down"],
    ) -> None:
        """One step as one round trip: lock, checks, ledger change, the migration, the
        state row, COMMIT (a Python migration runs between two such scripts)."""
        if not migration.transactional:
            self._outside_transaction(
                conn, schema, namespace, migration, tenant, expected, which=which
            )
            return
        cfg = self.config
        head = self._begin(schema)
        if expected is not None:
            head += self._expect_sql(schema, expected)
        if which == "up":
            head += insert_sql(cfg, schema, migration) + ";\n"
            body = migration.up_sql
            tail = f"{finish_sql(cfg, schema, migration)};\n"
        else:
            head += delete_sql(cfg, schema, migration.name) + ";\n"
            body = migration.down_sql or ""
            tail = ""
        tail += f"{state_upsert_sql(cfg, schema, namespace)};\nCOMMIT"

        def attempt() -> None:
            if migration.kind == "sql":
                run_script(conn, head + body + "\n;\n" + tail)
            else:
                run_script(conn, head)
                self._call_python(conn, migration, which, schema, namespace, tenant)
                run_script(conn, tail)

        self._guarded(conn, schema, migration, attempt)

    def _guarded(
        self, conn: Connection, schema: str, migration: Migration, attempt: Callable[[], None]
    ) -> None:
        try:
            self._with_retries(attempt, conn)
        except StepError:
            rollback_quietly(conn)
            raise
        except (psycopg.Error, sa.exc.DBAPIError) as exc:
            rollback_quietly(conn)
            raise StepError(
                migration.name,
                " ".join([describe_error(exc, migration), *getattr(exc, "__notes__", ())]),
                _sqlstate(exc),
                already_applied=_is_ledger_conflict(exc, self.config, schema),
            ) from exc
        except Exception as exc:
            rollback_quietly(conn)
            raise StepError(migration.name, describe_error(exc, migration)) from exc

    def _call_python(
        self,
        conn: Connection,
        migration: Migration,
        which: Literal["up", "down"],
        schema: str,
        namespace: Namespace,
        tenant: str | None,
    ) -> None:
        # Imported here, on first use: Alembic (with Mako) is a fifth of the command
        # line's start-up, and runs without Python migrations never need it.
        from alembic.operations import Operations
        from alembic.runtime.migration import MigrationContext

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

    def _outside_transaction(
        self,
        conn: Connection,
        schema: str,
        namespace: Namespace,
        migration: Migration,
        tenant: str | None,
        expected: str | None,
        which: Literal["up", "down"] = "up",
    ) -> None:
        """For CREATE INDEX CONCURRENTLY and friends: statements in autocommit, then the
        ledger row (written by up, deleted by down) in a transaction of its own. Such
        migrations should be idempotent (IF NOT EXISTS / IF EXISTS): a crash or a retry
        between their statements and the ledger runs them again."""
        cfg = self.config
        if which == "up":
            script, ledger_sql = migration.up_sql, insert_sql(cfg, schema, migration)
        else:
            script, ledger_sql = migration.down_sql or "", delete_sql(cfg, schema, migration.name)
        session = [f"SET search_path TO {quote_ident(schema)}"]
        if self.settings.lock_timeout:
            session.append(f"SET lock_timeout = {quote_literal(self.settings.lock_timeout)}")
        if self.settings.statement_timeout:
            session.append(
                f"SET statement_timeout = {quote_literal(self.settings.statement_timeout)}"
            )

        check = self._expect_sql(schema, expected) if expected is not None else ""

        def attempt() -> None:
            if check:
                run_script(conn, f"BEGIN;\n{schema_lock_sql(schema)};\n{check}COMMIT")
            run_script(conn, ";\n".join(session))
            try:
                if migration.kind == "sql":
                    for statement in split_statements(script):
                        driver(conn).execute(statement.encode("utf-8"), prepare=False)
                else:
                    self._call_python(conn, migration, which, schema, namespace, tenant)
                run_script(
                    conn,
                    f"BEGIN;\n{schema_lock_sql(schema)};\n"
                    + (self._no_invalid_indexes_sql(schema) if which == "up" else "")
                    + f"{ledger_sql};\n{state_upsert_sql(cfg, schema, namespace)};\nCOMMIT",
                )
            finally:
                rollback_quietly(conn)
                run_script(conn, "RESET search_path; RESET lock_timeout; RESET statement_timeout")

        self._guarded(conn, schema, migration, attempt)

    # --- one schema --------------------------------------------------------------

    def apply_plan(
        self, conn: Connection, plan: SchemaPlan, tenant: str | None, worker: int = 0
    ) -> SchemaResult:
        """Apply a schema's pending migrations in order; stop at the first failure."""
        result = SchemaResult(plan.schema, plan.namespace)
        started = time.perf_counter()
        replans = 0
        pending = list(plan.pending)
        pairs = list(plan.applied_pairs)
        while pending:
            migration = pending.pop(0)
            self.progress.step(worker, plan.schema, migration.name)
            try:
                self.apply_step(
                    conn,
                    plan.schema,
                    plan.namespace,
                    migration,
                    tenant,
                    expected=fingerprint(pairs),
                )
            except StepError as exc:
                moved = exc.sqlstate == LEDGER_MOVED or exc.already_applied
                if moved and self.replan is not None and replans < 3:
                    # Another command changed this schema since planning: plan it again.
                    replans += 1
                    fresh = self.replan(conn, plan.schema, plan.namespace)
                    if fresh.problems:
                        result.failed_migration = migration.name
                        result.error = "; ".join(fresh.problems)
                        break
                    pending = list(fresh.pending)
                    pairs = list(fresh.applied_pairs)
                    continue
                gone = exc.sqlstate in GONE and tenant is not None
                if gone and not self._registered(conn, plan.schema):
                    result.dropped = True  # dropped while the run went on: nothing to do
                    break
                result.failed_migration = migration.name
                result.error = exc.message
                break
            result.applied.append(migration.name)
            pairs.append((migration.name, migration.checksum))
        result.seconds = time.perf_counter() - started
        self.progress.schema_done(worker, result)
        return result

    def _registered(self, conn: Connection, schema: str) -> bool:
        try:
            return bool(
                conn.execute(
                    sa.text(
                        f"SELECT EXISTS (SELECT 1 FROM {tenant_ref(self.config)} "
                        "WHERE schema_name = :s)"
                    ),
                    {"s": schema},
                ).scalar()
            )
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
                self.revert_step(conn, schema, namespace, migration, tenant, expected)
            except StepError as exc:
                result.failed_migration = migration.name
                result.error = exc.message
                if exc.sqlstate == LEDGER_MOVED:
                    result.error = (
                        f"the ledger of schema {schema} changed since down read it "
                        "(another command ran); nothing more was reverted, check "
                        "'mtm history' and run down again"
                    )
                break
            result.reverted.append(migration.name)
            if pairs is not None:
                pairs.pop(migration.name, None)
        result.seconds = time.perf_counter() - started
        self.progress.schema_done(0, result)
        return result

    # --- a new tenant ------------------------------------------------------------

    def create_tenant(
        self,
        conn: Connection,
        schema: str,
        name: str | None,
        domains: list[str],
        migrations: list[Migration],
        setup: Sequence[str] = (),
    ) -> SchemaResult:
        """Register a tenant, create its schema and ledger, and apply ``migrations``: all in
        one transaction, so a failure leaves no row and no schema behind. ``setup`` are
        statements run in that transaction right after the ledger (the tenant role).

        SQL migrations are sent together in one round trip. If that fails, the create is
        tried again one migration per round trip, only to name the migration that failed.
        Migrations from the first one that must run outside a transaction onwards are
        applied as ordinary steps after the commit; the result says how they went.
        Raises ``StepError`` if the create itself failed (and so left nothing behind).
        """
        inside: list[Migration] = []
        for m in migrations:
            if not m.transactional:
                break
            inside.append(m)
        result = SchemaResult(schema, "tenant")
        started = time.perf_counter()
        try:
            self._create_once(conn, schema, name, domains, inside, setup, batch=True)
        except StepError as first:
            if first.migration is not None or not any(m.kind == "sql" for m in inside):
                raise
            # Replayed one migration per round trip, to name the one at fault; if the
            # failure was passing (a lock timeout), the replay simply creates the tenant.
            self._create_once(conn, schema, name, domains, inside, setup, batch=False)
        result.applied = [m.name for m in inside]
        rest = migrations[len(inside) :]
        if rest:
            tail = self.apply_plan(
                conn,
                SchemaPlan(
                    schema,
                    "tenant",
                    len(migrations),
                    len(inside),
                    None,
                    list(rest),
                    applied_pairs=tuple((m.name, m.checksum) for m in inside),
                ),
                schema,
            )
            result.applied += tail.applied
            result.failed_migration, result.error = tail.failed_migration, tail.error
        result.seconds = time.perf_counter() - started
        return result

    def _create_once(
        self,
        conn: Connection,
        schema: str,
        name: str | None,
        domains: list[str],
        migrations: list[Migration],
        setup: Sequence[str],
        *,
        batch: bool,
    ) -> None:
        cfg = self.config
        lit = quote_literal
        head = [
            "BEGIN",
            schema_lock_sql(schema),
            "SET LOCAL standard_conforming_strings = on",
            self._locals(schema),
            f"INSERT INTO {tenant_ref(cfg)} (schema_name, name) "
            f"VALUES ({lit(schema)}, {lit(name) if name is not None else 'NULL'})",
        ]
        if domains:
            values = ", ".join(f"({lit(d)}, {lit(schema)})" for d in domains)
            head.append(f"INSERT INTO {domain_ref(cfg)} (domain, schema_name) VALUES {values}")
        head += [f"CREATE SCHEMA {quote_ident(schema)}", ledger_ddl(cfg, schema), *setup]
        # (sql, the migration it belongs to); a Python migration has no SQL of its own.
        units: list[tuple[str, Migration | None]] = [(";\n".join(head) + ";\n", None)]
        for m in migrations:
            if m.kind == "python":
                units.append(("", m))
            else:
                units.append(
                    (
                        insert_sql(cfg, schema, m)
                        + ";\n"
                        + m.up_sql
                        + "\n;\n"
                        + finish_sql(cfg, schema, m)
                        + ";\n",
                        m,
                    )
                )
        units.append((f"{state_upsert_sql(cfg, schema, 'tenant')};\nCOMMIT", None))
        chunks: list[tuple[str, Migration | None]] = []
        for sql, owner in units:
            python = owner is not None and owner.kind == "python"
            if batch and chunks and not python and _is_sql(chunks[-1]):
                chunks[-1] = (chunks[-1][0] + sql, None)  # one round trip, no single owner
            else:
                chunks.append((sql, owner))
        current: Migration | None = None
        try:
            for sql, owner in chunks:
                current = owner
                if owner is not None and owner.kind == "python":
                    run_script(conn, insert_sql(cfg, schema, owner))
                    self._call_python(conn, owner, "up", schema, "tenant", schema)
                    run_script(conn, finish_sql(cfg, schema, owner))
                else:
                    run_script(conn, sql)
        except (psycopg.Error, sa.exc.DBAPIError) as exc:
            rollback_quietly(conn)
            raise StepError(
                current.name if current else None, describe_error(exc, current), _sqlstate(exc)
            ) from exc
        except Exception as exc:
            rollback_quietly(conn)
            raise StepError(
                current.name if current else None, describe_error(exc, current)
            ) from exc

    # --- many schemas ------------------------------------------------------------

    def run_fleet(
        self,
        plans: Iterable[SchemaPlan],
        *,
        jobs: int,
        continue_on_error: bool = False,
        on_result: Callable[[SchemaResult], None] | None = None,
    ) -> FleetOutcome:
        """Apply plans on ``jobs`` connections. After the first failure no new schema starts
        (running ones finish) unless ``continue_on_error``. Ctrl-C does the same."""
        work: queue.Queue[SchemaPlan | None] = queue.Queue(maxsize=jobs * 4)
        stop = threading.Event()
        outcome = FleetOutcome()
        lock = threading.Lock()

        def worker(index: int) -> None:
            try:
                conn = self.engine.connect()
            except Exception as exc:
                with lock:
                    outcome.connection_errors.append(describe_error(exc))
                stop.set()
                _drain(work)
                return
            try:
                while True:
                    plan = work.get()
                    if plan is None:
                        return
                    if stop.is_set():
                        with lock:
                            outcome.not_started += 1
                        continue
                    res = self.apply_plan(conn, plan, plan.schema, index)
                    with lock:
                        outcome.record(res)
                        if on_result is not None:
                            on_result(res)
                    if not res.ok and not continue_on_error:
                        stop.set()
                    if not res.ok and _connection_broken(conn):
                        conn.invalidate()
                        conn.close()
                        try:
                            conn = self.engine.connect()
                        except Exception as exc:  # the server went away: this worker stops
                            with lock:
                                outcome.connection_errors.append(describe_error(exc))
                            stop.set()
                            return
            finally:
                conn.close()

        threads = [
            threading.Thread(target=worker, args=(i,), daemon=True, name=f"mtm-{i}")
            for i in range(jobs)
        ]
        for t in threads:
            t.start()
        try:
            for plan in plans:
                if stop.is_set() or not _put_until_dead(work, plan, threads):
                    with lock:
                        outcome.not_started += 1  # never handed to a worker
                    continue
            for _ in threads:
                _put_until_dead(work, None, threads)
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            stop.set()
            outcome.interrupted = True
            for _ in threads:
                _put_until_dead(work, None, threads)
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        return outcome


@dataclass
class FleetOutcome:
    """Counts and failures of a fleet run; results are streamed, not kept."""

    schemas: int = 0
    steps: int = 0
    failures: list[SchemaResult] = field(default_factory=list)
    not_started: int = 0
    interrupted: bool = False
    connection_errors: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # tenants dropped while the run went on

    def record(self, result: SchemaResult) -> None:
        self.schemas += 1
        self.steps += len(result.applied)
        if not result.ok:
            self.failures.append(result)
        if result.dropped:
            self.dropped.append(result.schema)


def _is_sql(chunk: tuple[str, Migration | None]) -> bool:
    """Whether a chunk is SQL text (which may merge with more), not a Python migration."""
    return chunk[1] is None or chunk[1].kind == "sql"


def _connection_broken(conn: Connection) -> bool:
    try:
        return bool(driver(conn).closed) or driver(conn).broken
    except Exception:
        return True


def _drain(work: queue.Queue[Any]) -> None:
    while True:
        try:
            work.get_nowait()
        except queue.Empty:
            return


def _put_until_dead(work: queue.Queue[Any], item: Any, threads: list[threading.Thread]) -> bool:
    """Queue ``item`` unless every worker has died; say whether it was queued."""
    while True:
        try:
            work.put(item, timeout=0.2)
            return True
        except queue.Full:
            if not any(t.is_alive() for t in threads):
                return False
