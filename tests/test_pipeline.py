"""Pipelined steps on a real server: a worker keeps several tenants' steps in flight on
one connection (``pipeline.StepPipeline``). Each step must still be its own transaction
with its own outcome, ledger row, state row, report entry and log records, whatever
fails around it; what cannot be pipelined must take the ordinary path."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import mtm
from _reliability import spawn, tables, wait_until, waiting_on_gate
from conftest import Project, _libpq
from mtm.locks import SCHEMA_LOCK_CLASS
from mtm.migrations import Migration, discover
from mtm.pipeline import DEPTH, pipelinable
from mtm.plan import fingerprint

HEAD = ["0001_items", "0002_notes", "0003_tags"]
TABLE_OF = {"0001_items": "items", "0002_notes": "notes"}

# The middle migration fails (after changing something) in the schemas listed in
# public.poison, or ends its own session in those listed in public.doom.
NOTES = """
CREATE TABLE notes (id int PRIMARY KEY);
SELECT pg_terminate_backend(pg_backend_pid())
  WHERE EXISTS (SELECT 1 FROM public.doom WHERE schema_name = current_schema());
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM public.poison WHERE schema_name = current_schema()) THEN
    RAISE EXCEPTION 'poisoned tenant %', current_schema();
  END IF;
END $$;
"""


def _fleet(
    project: Project, count: int, *, poisoned: tuple[str, ...] = (), doomed: tuple[str, ...] = ()
) -> list[str]:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int PRIMARY KEY);")
    project.write("tenant", "0002_notes.sql", NOTES)
    project.write("tenant", "0003_tags.sql", "ALTER TABLE items ADD COLUMN tag text;")
    project.query("CREATE TABLE public.poison (schema_name text)")
    project.query("CREATE TABLE public.doom (schema_name text)")
    project.query("INSERT INTO public.poison SELECT unnest(%s::text[])", (list(poisoned),))
    project.query("INSERT INTO public.doom SELECT unnest(%s::text[])", (list(doomed),))
    names = [f"t{i:02d}" for i in range(count)]
    for name in names:
        mtm.create(project.config, name, migrate=False)
    return names


def _ledgers(project: Project, names: list[str]) -> dict[str, list[tuple[str, str]]]:
    return {
        s: [
            (r[0], r[1])
            for r in project.query(
                f'SELECT name, checksum FROM "{s}".mtm_migrations ORDER BY name COLLATE "C"'
            )
        ]
        for s in names
    }


def _assert_exact(project: Project, names: list[str]) -> dict[str, list[str]]:
    """Every schema at a clean step: its ledger a prefix of HEAD with the files'
    checksums, its tables exactly those of its ledger, its state row the ledger's."""
    checksums = {m.name: m.checksum for m in discover(project.migrations).tenant}
    states = {
        r[0]: (r[1], r[2], r[3])
        for r in project.query(
            "SELECT schema_name, fingerprint, applied, last_migration FROM mtm_migrations_state"
        )
    }
    out = {}
    for schema, rows in _ledgers(project, names).items():
        applied = [name for name, _ in rows]
        assert applied == HEAD[: len(applied)], (schema, applied)
        assert all(checksums[name] == checksum for name, checksum in rows), schema
        assert tables(project, schema) == {TABLE_OF[m] for m in applied if m in TABLE_OF}
        assert states[schema] == (
            fingerprint(rows),
            len(rows),
            applied[-1] if applied else None,
        ), schema
        out[schema] = applied
    return out


class _Records(logging.Handler):
    """Every record of mtm's loggers, and events set when named records arrive."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.seen: dict[tuple[str, str], threading.Event] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        key = (getattr(record, "event", ""), getattr(record, "schema", ""))
        self.seen.setdefault(key, threading.Event()).set()

    def event(self, name: str, schema: str) -> threading.Event:
        return self.seen.setdefault((name, schema), threading.Event())

    def of(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "event", None) == name]


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("mtm")
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def _ends(records: _Records) -> dict[str, list[str]]:
    """The step.end records of a run: schema -> migrations, in order."""
    out: dict[str, list[str]] = {}
    for r in records.of("step.end"):
        out.setdefault(r.schema, []).append(r.migration)  # type: ignore[attr-defined]
    return out


def _pipelined(records: _Records) -> set[str]:
    return {r.schema for r in records.of("step.end") if getattr(r, "pipelined", False)}  # type: ignore[attr-defined]


# --- a failure in the middle of a pipeline ------------------------------------------------


def test_a_step_failing_mid_pipeline_leaves_every_neighbour_exact(
    project: Project, records: _Records
) -> None:
    names = _fleet(project, 12, poisoned=("t05",))
    result = mtm.migrate(project.config, jobs=1, continue_on_error=True)
    assert not result.ok
    # The report: one failure, the right step and the database's words; every step
    # applied counted once.
    [failed] = result.failures
    assert (failed.schema, failed.failed_migration) == ("t05", "0002_notes")
    assert failed.error is not None and "poisoned tenant t05" in failed.error
    assert failed.applied == ["0001_items"]
    assert result.outcome.steps == 11 * 3 + 1 and result.outcome.schemas == 12
    # The database: t05 at its clean step, its neighbours before and after it at head,
    # every ledger row and state row exactly its own.
    ledgers = _assert_exact(project, names)
    assert ledgers["t05"] == ["0001_items"]
    assert project.scalar("SELECT to_regclass('t05.notes')") is None
    assert all(ledgers[s] == HEAD for s in names if s != "t05")
    # The log: one step.end per applied step, one step.failed, for the right schema.
    assert _ends(records) == {s: ledgers[s] for s in names}
    assert [(r.schema, r.migration) for r in records.of("step.failed")] == [  # type: ignore[attr-defined]
        ("t05", "0002_notes")
    ]
    # The neighbours on both sides went through the pipeline.
    assert {"t04", "t06"} <= _pipelined(records)
    # Nothing was applied twice (a step sent again after the failure ran once).
    assert all(
        n == 1 for n in Counter((r.schema, r.migration) for r in records.of("step.end")).values()
    )  # type: ignore[attr-defined]


def test_without_continue_on_error_no_schema_is_left_part_way(
    project: Project, records: _Records
) -> None:
    names = _fleet(project, 16, poisoned=("t05",))
    result = mtm.migrate(project.config, jobs=1)
    [failed] = result.failures
    assert (failed.schema, failed.failed_migration) == ("t05", "0002_notes")
    ledgers = _assert_exact(project, names)
    assert ledgers["t05"] == ["0001_items"]
    assert all(ledgers[s] == HEAD for s in names[:5])  # before the failure
    # After it: a schema already sent finished whole; the others never started. At most
    # a pipeline's depth of steps was in flight past t05.
    after = [s for s in names[6:] if ledgers[s]]
    assert all(ledgers[s] == HEAD for s in after)
    assert len(after) * len(HEAD) <= DEPTH
    assert result.outcome.not_started == len(names) - 6 - len(after)
    assert _ends(records) == {s: v for s, v in ledgers.items() if v}


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_the_report_of_a_pipelined_run_with_a_failure(project: Project, jobs: str) -> None:
    names = _fleet(project, 10, poisoned=("t03", "t07"))
    r = project.cli("migrate", "--jobs", jobs, "--continue-on-error")
    assert r.exit_code == 1, r.output
    assert "FAILED t03: migration 0002_notes: poisoned tenant t03" in r.output
    assert "FAILED t07: migration 0002_notes: poisoned tenant t07" in r.output
    assert "26 steps applied" in r.output, r.output  # 8 x 3 + 2
    ledgers = _assert_exact(project, names)
    assert ledgers["t03"] == ledgers["t07"] == ["0001_items"]
    assert project.cli("validate").exit_code == 0


def test_a_connection_lost_mid_pipeline(project: Project, records: _Records) -> None:
    """t04's step ends its own session with steps of later tenants already sent: those
    are reported failed (their outcome unknown to mtm), every schema stays clean, the
    worker reconnects for the rest, and the next run completes them."""
    names = _fleet(project, 12, doomed=("t04",))
    result = mtm.migrate(project.config, jobs=1, continue_on_error=True)
    failed = {f.schema: f for f in result.failures}
    assert "t04" in failed and failed["t04"].failed_migration == "0002_notes"
    assert all("connection" in (f.error or "") for f in failed.values()), failed
    assert set(failed) <= set(names[4 : 4 + DEPTH])  # only what was in flight
    ledgers = _assert_exact(project, names)
    assert all(ledgers[s] == HEAD for s in names if s not in failed)
    project.query("DELETE FROM public.doom")
    assert mtm.migrate(project.config, jobs=1).ok
    assert all(v == HEAD for v in _assert_exact(project, names).values())


# --- what needs the ordinary path's waits and retries --------------------------------------


def test_lock_timeout_in_a_pipeline_is_retried(project: Project, records: _Records) -> None:
    names = _fleet(project, 8)
    assert mtm.migrate(project.config, to="tenant:0002_notes").ok
    records.records.clear()
    blocker = psycopg.connect(_libpq(project.url))
    blocker.execute("LOCK TABLE t03.items IN ACCESS SHARE MODE")
    retried = records.event("step.retry", "t03")

    def release_on_the_retry() -> None:
        retried.wait(120)
        blocker.close()

    watcher = threading.Thread(target=release_on_the_retry)
    watcher.start()
    try:
        result = mtm.migrate(project.config, jobs=1, lock_timeout="200ms", retries=10)
    finally:
        retried.set()
        watcher.join()
        blocker.close()
    assert result.ok, result.failures
    assert all(v == HEAD for v in _assert_exact(project, names).values())
    assert [r.schema for r in records.of("step.retry")] == ["t03"]  # type: ignore[attr-defined]
    assert {"t02", "t04"} <= _pipelined(records)  # its neighbours did not wait
    assert "t03" not in _pipelined(records)  # it went the ordinary way
    assert sum(1 for r in records.of("step.end") if r.schema == "t03") == 1  # type: ignore[attr-defined]


def test_a_busy_schema_in_a_pipeline_waits_for_its_lock(
    project: Project, records: _Records
) -> None:
    names = _fleet(project, 8)
    holder = psycopg.connect(_libpq(project.url), autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s, hashtext('t03'))", (SCHEMA_LOCK_CLASS,))
    waiting = records.event("lock.wait", "t03")

    def release_once_waited() -> None:
        waiting.wait(120)
        holder.close()

    watcher = threading.Thread(target=release_once_waited)
    watcher.start()
    try:
        result = mtm.migrate(project.config, jobs=1)
    finally:
        waiting.set()
        watcher.join()
        holder.close()
    assert result.ok, result.failures
    assert all(v == HEAD for v in _assert_exact(project, names).values())
    assert waiting.is_set() and {"t02", "t04"} <= _pipelined(records)


# --- steps that cannot go in a pipeline ---------------------------------------------------

ORDINARY = {
    "python": (
        "0002_notes.py",
        "def up(op):\n    op.execute('CREATE TABLE notes (id int PRIMARY KEY)')\n",
    ),
    "no-transaction": (
        "0002_notes.sql",
        "-- mtm:no-transaction\nCREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY);\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS notes_id_idx ON notes (id);\n",
    ),
    "savepoint": (
        "0002_notes.sql",
        "SAVEPOINT a;\nCREATE TABLE notes (id int PRIMARY KEY);\nRELEASE SAVEPOINT a;\n",
    ),
    "copy": (
        "0002_notes.sql",
        "CREATE TABLE notes (id int PRIMARY KEY);\nCOPY (SELECT 1) TO '/dev/null';\n",
    ),
}


@pytest.mark.parametrize("kind", sorted(ORDINARY))
def test_steps_that_cannot_be_pipelined_take_the_ordinary_path(
    project: Project, records: _Records, kind: str
) -> None:
    names = _fleet(project, 4)
    (project.migrations / "tenant" / "0002_notes.sql").unlink()
    filename, text = ORDINARY[kind]
    project.write("tenant", filename, text)
    assert pipelinable(_migration(project, "0002_notes")) is None
    assert pipelinable(_migration(project, "0001_items")) == [
        "CREATE TABLE items (id int PRIMARY KEY)"
    ]
    result = mtm.migrate(project.config, jobs=1)
    assert result.ok, result.failures
    assert all(v == HEAD for v in _assert_exact(project, names).values())
    assert _ends(records) == {s: HEAD for s in names}
    assert _pipelined(records) == set()  # the whole plan took the ordinary path


def test_a_fleet_with_nothing_in_the_way_is_pipelined_throughout(
    project: Project, records: _Records
) -> None:
    names = _fleet(project, 6)
    result = mtm.migrate(project.config, jobs=2)
    assert result.ok and result.outcome.steps == 18
    assert all(v == HEAD for v in _assert_exact(project, names).values())
    assert _pipelined(records) == set(names)
    durations = [r.duration_ms for r in records.of("step.end")]  # type: ignore[attr-defined]
    assert len(durations) == 18 and all(d >= 0 for d in durations)


def _migration(project: Project, name: str) -> Migration:
    [found] = [m for m in discover(project.migrations).tenant if m.name == name]
    return found


# --- stopping mid-pipeline ----------------------------------------------------------------

GATE = 4344


def _gated(project: Project) -> list[str]:
    """Eight tenants at 0001; 0002 waits at the gate in t03."""
    names = _fleet(project, 8)
    assert mtm.migrate(project.config, to="tenant:0001_items").ok
    project.write(
        "tenant",
        "0002_notes.sql",
        f"SELECT pg_advisory_xact_lock({GATE}) WHERE current_schema() = 't03';\n"
        "CREATE TABLE notes (id int PRIMARY KEY);",
    )
    return names


@pytest.mark.slow
def test_ctrl_c_mid_pipeline_finishes_what_was_sent(project: Project, tmp_path: Path) -> None:
    names = _gated(project)
    gate = psycopg.connect(_libpq(project.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    taken = tmp_path / "ctrl-c-taken"
    run = spawn(project, "migrate", "--jobs", "1", "--lock-timeout", "60s", ctrl_c_marker=taken)
    try:
        wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="t03 at the gate")
        run.send_signal(signal.SIGINT)
        wait_until(taken.exists, message="the run to take the Ctrl-C")
        gate.close()
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
        gate.close()
    assert run.returncode == 130, out + err
    assert "Traceback" not in err
    ledgers = _assert_exact(project, names)
    assert all(ledgers[s] == HEAD for s in names[:4])  # before and at the gate
    # Behind it, what was already sent ran whole; nothing else started.
    sent = [s for s in names[4:] if ledgers[s] != ["0001_items"]]
    assert all(ledgers[s] == HEAD for s in sent)
    assert sent == names[4 : 4 + len(sent)]
    assert mtm.migrate(project.config, jobs=1).ok
    assert all(v == HEAD for v in _assert_exact(project, names).values())


@pytest.mark.slow
def test_sigkill_mid_pipeline_leaves_every_schema_clean(project: Project) -> None:
    names = _gated(project)
    gate = psycopg.connect(_libpq(project.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    run = spawn(project, "migrate", "--jobs", "1", "--lock-timeout", "60s")
    try:
        wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="t03 at the gate")
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        if run.poll() is None:
            run.kill()
        gate.close()  # the orphaned backend goes on with what it was sent
    assert run.returncode == -signal.SIGKILL
    wait_until(
        lambda: (
            not project.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'mtm%%' "
                "AND datname = current_database()"
            )
        ),
        message="the dead run's session to end",
    )
    ledgers = _assert_exact(project, names)
    assert all(ledgers[s] == HEAD for s in names[:3])
    assert project.cli("validate").exit_code == 0
    assert mtm.migrate(project.config, jobs=1).ok
    assert all(v == HEAD for v in _assert_exact(project, names).values())


# --- the pipelined frame's checks ---------------------------------------------------------


def _segment(project: Project, statements: list[str]) -> str | None:
    """Run a pipelined step's statements one message each, as a pipeline would; the
    error's words, or None."""
    with psycopg.connect(_libpq(project.url), autocommit=True) as conn:
        try:
            for sql in statements:
                conn.execute(sql.encode("utf-8"), prepare=False)
        except psycopg.Error as exc:
            return str(exc)
    return None


def test_the_pipelined_frame_checks_lock_ledger_and_records_like_the_ordinary_one(
    project: Project,
) -> None:
    from mtm import pipesteps
    from mtm.steps import Timeouts

    names = _fleet(project, 1)
    [items, *_] = discover(project.migrations).tenant
    body = pipelinable(items)
    assert body is not None

    # On a Citus cluster (pytest --citus), the frame of a Citus database, as the pipeline
    # sends it there.
    apart = project.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'citus'") == 1

    def statements(applied: list[tuple[str, str]]) -> list[str]:
        return pipesteps.step_up(
            project.config,
            "t00",
            "tenant",
            items,
            body,
            timeouts=Timeouts("1s"),
            applied=applied,
            apart=apart,
        )

    # The ledger is not what was planned: refused, nothing applied.
    error = _segment(project, statements([("0000_other", "x")]))
    assert error is not None and "mtm: the ledger of schema t00 changed during the run" in error
    # The schema's lock is taken by another session: refused at once, not waited for.
    holder = psycopg.connect(_libpq(project.url), autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('t00'))", (SCHEMA_LOCK_CLASS,))
        error = _segment(project, statements([]))
        assert error is not None and "mtm: schema t00 is busy" in error
    finally:
        holder.close()
    assert _assert_exact(project, names) == {"t00": []}
    # As planned: applied, with its ledger row (checksum, duration) and state row.
    assert _segment(project, statements([])) is None
    assert _assert_exact(project, names) == {"t00": ["0001_items"]}
    assert project.scalar("SELECT duration_ms >= 0 FROM t00.mtm_migrations") is True
    # Already applied (a second time, as planned then): the ledger's key refuses it.
    error = _segment(project, statements([]))
    assert error is not None and "the ledger of schema t00 changed" in error
    assert _assert_exact(project, names) == {"t00": ["0001_items"]}
