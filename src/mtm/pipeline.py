"""Steps of many schemas in flight on one connection: PostgreSQL's pipeline mode.

On one connection the ordinary path (``Runner.apply_plan``) sends a step and waits for
its reply before it sends the next: the server sits idle while the reply travels and
mtm builds the next step, and mtm sits idle while the server works. Here a worker
keeps up to ``DEPTH`` steps in flight, the next tenant's step sent while the server
runs the current one. Each step is still its own transaction (``BEGIN`` ... ``COMMIT``,
closed by a Sync), with its own outcome, ledger row, state row, lock and log records.

The protocol allows one statement per message, so a step's script is split into
statements by PostgreSQL's grammar (``sqlscript.split``). A plan with any step that
cannot go in a pipeline takes the ordinary path whole (``pipelinable``): Python
migrations, no-transaction ones, COPY, savepoints, statements PostgreSQL refuses in a
transaction block (and, from 17, in a pipeline).

Nothing that needs a reply before the next statement is done in a pipeline: the
schema's lock, the ledger check and the ledger row are checks in the server that fail
the step. A step that fails for its own reason (its lock taken, a lock timeout, the
ledger moved, a bad migration) is handed to the ordinary path from that step on, which
waits, retries, re-plans or reports exactly as it would have; its pipelined try was
rolled back. Steps sent after it whose ``BEGIN`` met the aborted transaction did not
run at all and are sent again. See docs/reliability.md, "Pipelined steps".
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy.engine import Connection

from . import pipesteps, sqlscript
from .database import APART, rollback_quietly
from .failures import describe_error
from .migrations import Migration
from .plan import SchemaPlan
from .results import SchemaResult
from .runner import Runner
from .sqlrun import driver

log = logging.getLogger("mtm.step")

# Steps in flight at most on one connection. Two keep the server busy; a few more
# absorb a slow spell of the client. It bounds what a failure sends again and what a
# lost connection leaves unknown.
DEPTH = 4

# A transaction already aborted: the step that met it (at its BEGIN) did not run.
IN_FAILED_TRANSACTION = "25P02"

Fallback = Callable[[Runner, Connection, SchemaPlan, int], SchemaResult]

_OK = {pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY}
_statements: dict[tuple[str, str], list[str] | None] = {}


def pipelinable(migration: Migration) -> list[str] | None:
    """The up script's statements if the step can go in a pipeline, else None."""
    if migration.kind != "sql" or not migration.transactional or migration.legacy:
        return None
    key = (str(migration.path), migration.checksum)
    if key not in _statements:
        _statements[key] = _split(migration.up_sql)
    return _statements[key]


def _split(sql: str) -> list[str] | None:
    try:
        statements = sqlscript.split(sql)
    except sqlscript.ScriptSyntaxError:
        return None  # the ordinary path reports it as the server sees it
    for statement in statements:
        if (
            statement.kind in ("TransactionStmt", "CopyStmt")
            or sqlscript.needs_no_transaction(statement)
            or "\x00" in statement.text
        ):
            return None
    return [statement.text for statement in statements]


@dataclass
class _Schema:
    """One schema's plan on its way through the pipeline."""

    plan: SchemaPlan
    bodies: list[list[str]]
    result: SchemaResult
    next: int = 0  # the next step to send
    done: int = 0  # steps committed
    failed: bool = False  # a step failed for its own reason: the ordinary path's now
    queued: bool = True
    started: float = field(default_factory=time.perf_counter)

    @property
    def finished(self) -> bool:
        return self.done == len(self.plan.pending)

    def applied(self, index: int) -> list[tuple[str, str]]:
        """The ledger's rows once the steps before ``index`` are applied."""
        return [*self.plan.applied_pairs, *_pairs(self.plan.pending[:index])]


@dataclass
class _Sent:
    schema: _Schema
    index: int
    statements: int
    at: float


class StepPipeline:
    """A worker's connection in pipeline mode; ``add`` plans, ``finish`` at the end.

    Each schema's result goes to ``ended`` (and the runner's progress) once, when its
    plan has ended, in the order they end. ``stopping`` says the run stops: a schema
    whose first step was skipped after another's failure is then not sent again.
    """

    def __init__(
        self,
        runner: Runner,
        conn: Connection,
        worker: int,
        fallback: Fallback,
        ended: Callable[[SchemaResult], None],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.runner = runner
        self.ended = ended
        self.stopping = stopping
        self.not_started = 0  # schemas dropped unstarted once the run was stopping
        self.conn = conn
        self.worker = worker
        self.fallback = fallback
        self.flight: deque[_Sent] = deque()
        self.queue: deque[_Schema] = deque()  # schemas with steps to send
        self.handover: list[_Schema] = []
        self.dirty = False  # a step failed: drain, end the transaction, then go on
        self.last = time.perf_counter()
        self._pgconn: Any = None

    # --- what the fleet calls ---------------------------------------------------------

    def add(self, plan: SchemaPlan) -> None:
        """Send ``plan``'s steps (or, if it cannot be pipelined, run it the ordinary way)."""
        bodies = [pipelinable(m) for m in plan.pending]
        if not plan.pending or any(b is None for b in bodies):
            self.finish()
            self.ended(self.fallback(self.runner, self.conn, plan, self.worker))
            return
        result = SchemaResult(plan.schema, plan.namespace)
        self.queue.append(_Schema(plan, [b for b in bodies if b is not None], result))
        self._pump()

    def finish(self) -> None:
        """Wait for every step in flight, hand failed ones over; leave pipeline mode."""
        while self.flight or self.queue or self.handover or self.dirty:
            self._pump()
            while self.flight:
                self._receive()
            self._repair()
        self._leave()

    def abandon(self, exc: BaseException) -> None:
        """Something broke (the connection, a bug): every schema not ended fails with it.

        The outcome of the steps in flight is not known: a COMMIT may have landed before
        its reply was lost, as for the one step in flight on the ordinary path.
        """
        error = describe_error(exc)
        schemas: dict[int, _Schema] = {}
        for schema in [*(s.schema for s in self.flight), *self.queue, *self.handover]:
            schemas.setdefault(id(schema), schema)
        self.flight.clear()
        self.queue.clear()
        self.handover.clear()
        self._pgconn = None
        # Its protocol state is not known: the connection is thrown away, not reused.
        self.conn.invalidate()
        for schema in schemas.values():
            schema.result.failed_migration = schema.plan.pending[schema.done].name
            schema.result.error = error
            self._log_failed(schema, error)
            self._end(schema)

    # --- sending and receiving --------------------------------------------------------

    def _pump(self) -> None:
        """Send queued steps, reading replies whenever ``DEPTH`` steps are in flight."""
        while self.queue:
            while len(self.flight) >= DEPTH or (self.dirty and self.flight):
                self._receive()
            if self.dirty or self.handover:
                self._repair()
                continue
            schema = self.queue[0]
            if schema.failed or schema.next >= len(schema.bodies):
                schema.queued = False
                self.queue.popleft()
                continue
            if schema.next == 0 and self.stopping():
                # Sent, but skipped after another schema's failure: it never started,
                # and no new schema starts once the run is stopping.
                self.queue.popleft()
                self.not_started += 1
                continue
            self._send(schema, schema.next)
            schema.next += 1

    def _send(self, schema: _Schema, index: int) -> None:
        pgconn = self._enter()
        plan, migration = schema.plan, schema.plan.pending[index]
        statements = pipesteps.step_up(
            self.runner.config,
            plan.schema,
            plan.namespace,
            migration,
            schema.bodies[index],
            timeouts=self.runner.settings.timeouts,
            applied=schema.applied(index),
            apart=bool(self.conn.info.get(APART)),
        )
        self.runner.progress.step(self.worker, plan.schema, migration.name)
        for sql in statements:
            pgconn.send_query_params(sql.encode("utf-8"), None)
        pgconn.pipeline_sync()
        self.flight.append(_Sent(schema, index, len(statements), time.perf_counter()))

    def _receive(self) -> None:
        """Read the replies of the oldest step in flight and settle its outcome."""
        sent = self.flight[0]
        pgconn = self._enter()
        error: psycopg.Error | None = None
        for number in range(sent.statements):
            res = self._result(pgconn)
            if res is None:
                raise psycopg.OperationalError("the server sent fewer results than statements")
            if res.status not in _OK and error is None:
                if res.status == pq.ExecStatus.PIPELINE_ABORTED:
                    error = psycopg.errors.PipelineAborted("skipped after an error")
                else:
                    error = psycopg.errors.error_from_result(res, encoding=self._encoding())
                    if pgconn.status == pq.ConnStatus.BAD:
                        raise error
                    if number == 0 and error.sqlstate == IN_FAILED_TRANSACTION:
                        error = psycopg.errors.PipelineAborted("met an aborted transaction")
            if self._result(pgconn) is not None:
                raise psycopg.OperationalError("the server sent more results than statements")
        sync = self._result(pgconn)
        if sync is None or sync.status != pq.ExecStatus.PIPELINE_SYNC:
            raise psycopg.OperationalError("the server did not end a step with its Sync")
        self.flight.popleft()
        now = time.perf_counter()
        self._settle(sent, error, now)
        self.last = now

    def _settle(self, sent: _Sent, error: psycopg.Error | None, now: float) -> None:
        schema = sent.schema
        if schema.failed:
            return  # after its schema's failed step: its ledger check cannot have passed
        if error is None:
            migration = schema.plan.pending[sent.index]
            schema.done += 1
            schema.result.applied.append(migration.name)
            self._log_applied(schema, migration, now - max(sent.at, self.last))
            if schema.finished:
                self._end(schema)
            return
        self.dirty = True
        if isinstance(error, psycopg.errors.PipelineAborted):
            schema.next = min(schema.next, sent.index)  # not run: sent again, in order
            if not schema.queued:
                schema.queued = True
                self.queue.append(schema)
            return
        schema.failed = True
        self.handover.append(schema)
        step = schema.plan.pending[sent.index].name
        log.debug(
            "%s in %s goes the ordinary way: %s",
            step,
            schema.plan.schema,
            describe_error(error),
            extra={
                "event": "step.unpipelined",
                "schema": schema.plan.schema,
                "namespace": schema.plan.namespace,
                "migration": step,
                "error": describe_error(error),
            },
        )

    def _repair(self) -> None:
        """With nothing in flight after a failure: end the aborted transaction, then run
        each failed schema the ordinary way from its failed step."""
        if self.flight:
            return
        if self.dirty:
            self._leave()
            rollback_quietly(self.conn)
            self.dirty = False
        while self.handover:
            self._leave()
            self._ordinary(self.handover.pop(0))

    def _ordinary(self, schema: _Schema) -> None:
        """The rest of a schema's plan on the ordinary path, reported as one result."""
        plan, done = schema.plan, schema.done
        rest = SchemaPlan(
            plan.schema,
            plan.namespace,
            plan.total,
            plan.applied + done,
            plan.pending[done - 1].name if done else plan.last_applied,
            pending=plan.pending[done:],
            applied_pairs=(*plan.applied_pairs, *_pairs(plan.pending[:done])),
        )
        quiet = Runner(
            self.runner.config,
            self.runner.settings,
            _StepsOnly(self.runner.progress),
            self.runner.replan,
        )
        tail = self.fallback(quiet, self.conn, rest, self.worker)
        result = schema.result
        result.applied += tail.applied
        result.failed_migration, result.error = tail.failed_migration, tail.error
        result.dropped = tail.dropped
        self._end(schema)

    def _end(self, schema: _Schema) -> None:
        schema.result.seconds = time.perf_counter() - schema.started
        self.runner.progress.schema_done(self.worker, schema.result)
        self.ended(schema.result)

    # --- the connection ---------------------------------------------------------------

    def _enter(self) -> Any:
        """The libpq connection in pipeline mode (entered on first use)."""
        if self._pgconn is None:
            pgconn = driver(self.conn).pgconn
            pgconn.enter_pipeline_mode()
            self._pgconn = pgconn
        return self._pgconn

    def _leave(self) -> None:
        if self._pgconn is not None:
            pgconn, self._pgconn = self._pgconn, None
            if pgconn.status == pq.ConnStatus.OK:
                pgconn.exit_pipeline_mode()

    def _encoding(self) -> str:
        try:
            return driver(self.conn).info.encoding
        except psycopg.Error:
            return "utf-8"

    @staticmethod
    def _result(pgconn: Any) -> Any:
        """The next result, waiting for the socket without holding the GIL."""
        while pgconn.is_busy():
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()
        return pgconn.get_result()

    # --- log records ------------------------------------------------------------------

    def _log_applied(self, schema: _Schema, migration: Migration, seconds: float) -> None:
        fields = {
            "schema": schema.plan.schema,
            "namespace": schema.plan.namespace,
            "migration": migration.name,
            "direction": "up",
            "pipelined": True,
        }
        log.info(
            "applying %s to %s",
            migration.name,
            schema.plan.schema,
            extra={"event": "step.start", **fields},
        )
        duration_ms = round(1000 * seconds, 3)
        log.info(
            "applied %s to %s in %sms",
            migration.name,
            schema.plan.schema,
            duration_ms,
            extra={"event": "step.end", "duration_ms": duration_ms, **fields},
        )

    def _log_failed(self, schema: _Schema, error: str) -> None:
        migration = schema.plan.pending[schema.done].name
        log.error(
            "step.failed: %s in %s: %s",
            migration,
            schema.plan.schema,
            error,
            extra={
                "event": "step.failed",
                "schema": schema.plan.schema,
                "namespace": schema.plan.namespace,
                "migration": migration,
                "direction": "up",
                "error": error,
            },
        )


class _StepsOnly:
    """A progress display told of steps but not of the schema's end: the pipeline
    reports the schema once, with the steps it applied before the ordinary path."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def begin(self, schemas: int, steps: int) -> None:
        pass

    def step(self, worker: int, schema: str, migration: str) -> None:
        self.progress.step(worker, schema, migration)

    def schema_done(self, worker: int, result: SchemaResult) -> None:
        pass

    def end(self) -> None:
        pass


def _pairs(migrations: list[Migration]) -> list[tuple[str, str]]:
    return [(m.name, m.checksum) for m in migrations]
