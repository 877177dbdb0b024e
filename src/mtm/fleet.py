"""The fleet: every schema's plan on N worker threads, with a failure policy and progress.

Workers are threads, each with its own connection; psycopg releases the GIL while it
waits on the server, which is where the time goes. Plans are fed through a bounded
queue, so memory stays flat however many tenants there are. After the first failure
no new schema starts (running ones finish) unless ``continue_on_error``; Ctrl-C does
the same.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy.engine import Connection, Engine

from .failures import describe_error
from .pipeline import StepPipeline
from .plan import SchemaPlan
from .results import FleetOutcome, SchemaResult
from .runner import Runner
from .sqlrun import driver

log = logging.getLogger("mtm.run")


def run(
    runner: Runner,
    engine: Engine,
    conn: Connection,
    public: SchemaPlan,
    plans: Sequence[SchemaPlan],
    *,
    jobs: int,
    continue_on_error: bool = False,
) -> tuple[SchemaResult | None, FleetOutcome]:
    """A whole run: the public plan on ``conn``, then, if it went well, the tenants'."""
    schemas = len(plans) + (1 if public.pending else 0)
    total = len(public.pending) + sum(len(p.pending) for p in plans)
    log.info(
        "run: %d steps in %d schemas on %d workers",
        total,
        schemas,
        jobs,
        extra={"event": "run.start", "schemas": schemas, "steps": total, "jobs": jobs},
    )
    started = time.perf_counter()
    runner.progress.begin(schemas, total)
    public_result = None
    outcome = FleetOutcome()
    try:
        if public.pending:
            public_result = runner.apply_plan(conn, public, None)
        if public_result is None or public_result.ok:
            outcome = run_fleet(
                runner, engine, plans, jobs=jobs, continue_on_error=continue_on_error
            )
        else:
            outcome.not_started = len(plans)
    finally:
        runner.progress.end()
        failed = len(outcome.failures) + (0 if public_result is None or public_result.ok else 1)
        applied = outcome.steps + (len(public_result.applied) if public_result else 0)
        duration_ms = round(1000 * (time.perf_counter() - started), 3)
        log.info(
            "run ended: %d steps applied, %d schemas failed in %sms",
            applied,
            failed,
            duration_ms,
            extra={
                "event": "run.end",
                "steps": applied,
                "failed": failed,
                "not_started": outcome.not_started,
                "interrupted": outcome.interrupted,
                "duration_ms": duration_ms,
            },
        )
    return public_result, outcome


def run_fleet(
    runner: Runner,
    engine: Engine,
    plans: Iterable[SchemaPlan],
    *,
    jobs: int,
    continue_on_error: bool = False,
    on_result: Callable[[SchemaResult], None] | None = None,
    pipeline: bool = True,
) -> FleetOutcome:
    """Apply plans on ``jobs`` connections of ``engine``; see the module's docstring.

    With ``pipeline`` each worker keeps several tenants' steps in flight on its
    connection (``pipeline.StepPipeline``); without, it waits for each step's reply.

    Longer than most: the workers are a closure over the queue, the stop flag and the
    outcome they share, which reads best in one place.
    """
    work: queue.Queue[SchemaPlan | None] = queue.Queue(maxsize=jobs * 4)
    stop = threading.Event()
    outcome = FleetOutcome()
    lock = threading.Lock()

    def connection_lost(exc: BaseException) -> None:
        with lock:
            outcome.connection_errors.append(describe_error(exc))
        stop.set()

    def worker(index: int) -> None:
        try:
            serve(index)
        finally:
            done[index].set()

    def serve(index: int) -> None:
        try:
            conn = engine.connect()
        except Exception as exc:
            connection_lost(exc)
            _drain(work)
            return
        steps = _steps(runner, conn, index, pipeline, record, stop.is_set)
        try:
            while (plan := work.get()) is not None:
                if stop.is_set():
                    with lock:
                        outcome.not_started += 1
                    continue
                if not steps.add(plan) and (conn.invalidated or _connection_broken(conn)):
                    conn.invalidate()
                    conn.close()
                    try:
                        conn = engine.connect()
                    except Exception as exc:  # the server went away: this worker stops
                        connection_lost(exc)
                        return
                    with lock:
                        outcome.not_started += steps.not_started
                    steps = _steps(runner, conn, index, pipeline, record, stop.is_set)
            steps.finish()
        finally:
            with lock:
                outcome.not_started += steps.not_started
            conn.close()

    def record(res: SchemaResult) -> None:
        with lock:
            outcome.record(res)
            if on_result is not None:
                on_result(res)
        if not res.ok and not continue_on_error:
            stop.set()

    done = [threading.Event() for _ in range(jobs)]
    for i in range(jobs):
        threading.Thread(target=worker, args=(i,), daemon=True, name=f"mtm-{i}").start()
    try:
        for plan in plans:
            if stop.is_set() or not _put_until_dead(work, plan, done):
                with lock:
                    outcome.not_started += 1  # never handed to a worker
        _finish(work, done)
    except KeyboardInterrupt:
        stop.set()
        outcome.interrupted = True
        _finish(work, done)
    return outcome


class _Steps(Protocol):
    @property
    def not_started(self) -> int: ...

    def add(self, plan: SchemaPlan) -> bool: ...
    def finish(self) -> None: ...


class _OneByOne:
    """A worker's schemas on the ordinary path, one step and one reply at a time."""

    def __init__(
        self, runner: Runner, conn: Connection, worker: int, ended: Callable[[SchemaResult], None]
    ) -> None:
        self.runner, self.conn, self.worker, self.ended = runner, conn, worker, ended
        self.not_started = 0

    def add(self, plan: SchemaPlan) -> bool:
        result = _apply(self.runner, self.conn, plan, self.worker)
        self.ended(result)
        return result.ok

    def finish(self) -> None:
        pass


class _Pipelined:
    """A worker's schemas through a ``StepPipeline``; whatever escapes it (a lost
    connection, a bug) fails every schema it had not ended. ``add`` says whether every
    schema that ended meanwhile went well."""

    def __init__(
        self,
        runner: Runner,
        conn: Connection,
        worker: int,
        ended: Callable[[SchemaResult], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.ok = True

        def end(result: SchemaResult) -> None:
            self.ok = self.ok and result.ok
            ended(result)

        self.pipe = StepPipeline(runner, conn, worker, _apply, end, stopping)

    @property
    def not_started(self) -> int:
        return self.pipe.not_started

    def add(self, plan: SchemaPlan) -> bool:
        self.ok = True
        try:
            self.pipe.add(plan)
        except (Exception, SystemExit) as exc:
            self.pipe.abandon(exc)
        return self.ok

    def finish(self) -> None:
        try:
            self.pipe.finish()
        except (Exception, SystemExit) as exc:
            self.pipe.abandon(exc)


def _steps(
    runner: Runner,
    conn: Connection,
    worker: int,
    pipeline: bool,
    ended: Callable[[SchemaResult], None],
    stopping: Callable[[], bool],
) -> _Steps:
    if pipeline:
        return _Pipelined(runner, conn, worker, ended, stopping)
    return _OneByOne(runner, conn, worker, ended)


def _apply(runner: Runner, conn: Connection, plan: SchemaPlan, worker: int) -> SchemaResult:
    """``runner.apply_plan``, with anything that still escapes it (a connection in a state
    SQLAlchemy will not use, a bug) made this schema's failure: a worker never ends
    without a result, so a run can never look like a success it was not."""
    try:
        return runner.apply_plan(conn, plan, plan.schema, worker)
    except (Exception, SystemExit) as exc:
        failed = plan.pending[0].name if plan.pending else None
        log.error(
            "worker %d failed on %s: %s",
            worker,
            plan.schema,
            describe_error(exc),
            exc_info=True,
            extra={"event": "step.failed", "schema": plan.schema, "error": describe_error(exc)},
        )
        result = SchemaResult(plan.schema, plan.namespace)
        result.failed_migration, result.error = failed, describe_error(exc)
        return result


def _finish(work: queue.Queue[Any], done: list[threading.Event]) -> None:
    """Tell every worker to stop after its queue, and wait for them.

    Waits on each worker's own event, not ``Thread.join``: on Python 3.11 a Ctrl-C that
    lands inside ``join`` marks the joined thread as ended while it still runs (the
    bpo-45274 handling in ``threading``), and the run would exit in the middle of a
    schema's plan instead of finishing it.
    """
    for _ in done:
        _put_until_dead(work, None, done)
    for finished in done:
        while not finished.wait(0.2):
            pass


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


def _put_until_dead(work: queue.Queue[Any], item: Any, done: list[threading.Event]) -> bool:
    """Queue ``item`` unless every worker has died; say whether it was queued."""
    while True:
        try:
            work.put(item, timeout=0.2)
            return True
        except queue.Full:
            if all(finished.is_set() for finished in done):
                return False
