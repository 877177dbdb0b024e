"""One runner at a time, and commands that are safe while a migrate runs (real processes).

A "gate" is an advisory lock the test holds: a migration that takes it waits there, so
the test decides exactly when a running mtm moves on, without sleeps that race.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from _reliability import (
    ledger,
    run_lock_pids,
    schema_lock_held,
    spawn,
    tables,
    wait_until,
    waiting_on_gate,
    waiting_on_schema_locks,
)
from conftest import Project, _libpq

GATE = 4242


@contextmanager
def gate(project: Project) -> Iterator[psycopg.Connection]:
    """Hold the gate until the block ends (or the returned connection unlocks it)."""
    conn = psycopg.connect(_libpq(project.url), autocommit=True)
    conn.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.slow
def test_second_migrate_fails_fast_naming_the_holder_then_waits_with_lock_wait(
    project: Project,
) -> None:
    project.write("public", "0001_gated.sql", f"SELECT pg_advisory_xact_lock({GATE});")
    with gate(project) as g:
        first = spawn(project, "migrate", "--lock-timeout", "60s")
        try:
            wait_until(
                lambda: waiting_on_gate(project, GATE) == 1, message="the first run at the gate"
            )
            assert len(run_lock_pids(project)) == 1

            # Fails at once: a run that queued instead would never return while the gate
            # is held (project.run's timeout would fail the test).
            second = project.run("migrate")
            assert second.returncode == 2, second.stderr
            message = second.stderr
            assert "another mtm run holds the migration lock" in message
            assert f"mtm migrate pid={first.pid} host=" in message  # who
            assert "connected since 20" in message  # since when
            assert "--lock-wait" in message
            assert ledger(project, "public") == []

            # With --lock-wait the second run queues, and goes on once the first is done.
            third = spawn(project, "migrate", "--lock-wait", "120")
            wait_until(
                lambda: _asking_for_the_run_lock(project, third.pid),
                message="the third run asking for the run lock",
            )
            assert third.poll() is None  # asked while the first holds it: still waiting
            g.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            out, err = first.communicate(timeout=30)
            assert first.returncode == 0, err
            out, err = third.communicate(timeout=30)
            assert third.returncode == 0, err
            assert "nothing to do" in out
        finally:
            for p in (first,):
                if p.poll() is None:
                    p.kill()
    assert ledger(project, "public") == ["0001_gated"]  # applied once, by the first run
    assert run_lock_pids(project) == []


def _asking_for_the_run_lock(project: Project, pid: int) -> bool:
    """Whether mtm process ``pid`` has named itself for the run lock and asked for it."""
    return bool(
        project.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name LIKE %s "
            "AND query LIKE '%%pg_try_advisory_lock%%')",
            (f"mtm migrate pid={pid} %",),
        )
    )


@pytest.mark.slow
def test_create_down_and_drop_while_a_migrate_runs(project: Project) -> None:
    """Tenants created, reverted or dropped mid-run end at head or are reported dropped."""
    project.write(
        "tenant", "0001_items.sql", "CREATE TABLE items (id int);\n-- mtm:down\nDROP TABLE items;"
    )
    for schema in ("a_slow", "b_down", "c_drop"):
        assert project.cli("create", schema).exit_code == 0
    project.write(
        "tenant",
        "0002_two.sql",
        f"SELECT pg_advisory_xact_lock({GATE}) WHERE current_schema() = 'a_slow';\n"
        "CREATE TABLE two (id int);",
    )
    project.write("tenant", "0003_three.sql", "CREATE TABLE three (id int);")

    with gate(project) as g:
        run = spawn(project, "migrate", "--jobs", "1", "--lock-timeout", "60s", "--json")
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="migrate inside a_slow")
            assert schema_lock_held(project, "a_slow")

            # While the run is stuck in a_slow: revert b_down, drop c_drop, create newt.
            # (In-process: each command is its own database session all the same.)
            r = project.cli("down", "--tenant", "b_down")
            assert r.exit_code == 0, r.output
            assert ledger(project, "b_down") == []
            r = project.cli("drop", "c_drop", "--yes")
            assert r.exit_code == 0, r.output
            r = project.cli("create", "newt")
            assert r.exit_code == 0, r.output
            assert ledger(project, "newt") == ["0001_items", "0002_two", "0003_three"]

            # And drop a_slow itself: it waits for the running step, then drops.
            dropper = spawn(project, "drop", "a_slow", "--yes")
            wait_until(
                lambda: waiting_on_schema_locks(project) == 1,
                message="drop waiting for a_slow's lock",
            )
            g.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            _, err = dropper.communicate(timeout=30)
            assert dropper.returncode == 0, err
            out, err = run.communicate(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True
    assert report["failures"] == []
    # a_slow's drop waited for the running step; whether the run's next step in a_slow
    # came before the drop (waiters poll: there is no queue) or found it gone, the report
    # says what happened and nothing failed.
    assert sorted(report["dropped"]) in (["a_slow", "c_drop"], ["c_drop"])

    head = ["0001_items", "0002_two", "0003_three"]
    assert project.schemas() == {"b_down", "newt"}
    for schema in ("b_down", "newt"):
        assert ledger(project, schema) == head
        assert tables(project, schema) == {"items", "two", "three"}
    registered = {r[0] for r in project.query("SELECT schema_name FROM public.tenants")}
    assert registered == {"b_down", "newt"}
    r = project.cli("validate")
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_down_never_reverts_under_a_step_it_did_not_plan_for(project: Project) -> None:
    """down plans from the ledger; if a migrate adds a step before down gets the schema's
    lock, down refuses instead of reverting a migration that is no longer the newest."""
    project.write(
        "tenant", "0001_items.sql", "CREATE TABLE items (id int);\n-- mtm:down\nDROP TABLE items;"
    )
    project.write(
        "tenant", "0002_more.sql", "CREATE TABLE more (id int);\n-- mtm:down\nDROP TABLE more;"
    )
    assert project.cli("create", "acme").exit_code == 0
    project.write(
        "tenant",
        "0003_gated.sql",
        f"SELECT pg_advisory_xact_lock({GATE});\nCREATE TABLE gated (id int);\n"
        "-- mtm:down\nDROP TABLE gated;",
    )
    with gate(project) as g:
        run = spawn(project, "migrate", "--lock-timeout", "60s")
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="migrate inside acme")
            down = spawn(project, "down", "--tenant", "acme")
            wait_until(
                lambda: waiting_on_schema_locks(project) == 1,
                message="down waiting for acme's lock",
            )
            g.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            _, err = run.communicate(timeout=30)
            assert run.returncode == 0, err
            _, err = down.communicate(timeout=30)
        finally:
            for p in (run,):
                if p.poll() is None:
                    p.kill()
    assert down.returncode == 1
    assert "acme" in err and "changed" in err
    assert ledger(project, "acme") == ["0001_items", "0002_more", "0003_gated"]
    assert tables(project, "acme") == {"items", "more", "gated"}


# --- lock_timeout, retries, statement_timeout ------------------------------------------


def _blocked_project(project: Project) -> psycopg.Connection:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write("tenant", "0002_note.sql", "ALTER TABLE items ADD COLUMN note text;")
    blocker = psycopg.connect(_libpq(project.url))
    blocker.execute("LOCK TABLE acme.items IN ACCESS SHARE MODE")  # as a long query would
    return blocker


def _columns(project: Project) -> set[str]:
    return {
        r[0]
        for r in project.query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'acme' AND table_name = 'items'"
        )
    }


def test_lock_timeout_fails_the_step_cleanly(project: Project) -> None:
    blocker = _blocked_project(project)
    try:
        # A step that waited instead would hang here until the blocker goes (never).
        r = project.cli("migrate", "--lock-timeout", "200ms", "--retries", "0")
    finally:
        blocker.close()
    assert r.exit_code == 1
    assert "FAILED acme: migration 0002_note: canceling statement due to lock timeout" in r.output
    assert ledger(project, "acme") == ["0001_items"]
    assert _columns(project) == {"id"}
    assert project.cli("validate").exit_code == 0  # the state row agrees with the ledger
    assert project.cli("migrate").exit_code == 0
    assert _columns(project) == {"id", "note"}


def _attempts_waiting_on_items(project: Project) -> set[tuple[int, object]]:
    """(backend, transaction start) of each session waiting for a lock on acme.items."""
    return {
        (r[0], r[1])
        for r in project.query(
            "SELECT a.pid, a.xact_start FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE NOT l.granted AND l.relation = 'acme.items'::regclass "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    }


def test_lock_timeout_is_retried_until_the_blocker_goes(project: Project) -> None:
    """The blocker goes only once a second attempt (a new transaction) waits, so the run
    has certainly failed once on the lock timeout and retried."""
    blocker = _blocked_project(project)
    attempts: set[tuple[int, object]] = set()
    watch_failed: list[BaseException] = []

    def a_second_attempt_waits() -> bool:
        attempts.update(_attempts_waiting_on_items(project))
        return len(attempts) >= 2

    def release_on_the_retry() -> None:
        try:
            wait_until(a_second_attempt_waits, message="a second attempt waiting on the blocker")
        except BaseException as exc:
            watch_failed.append(exc)
        finally:
            blocker.close()

    watcher = threading.Thread(target=release_on_the_retry)
    watcher.start()
    try:
        r = project.cli("migrate", "--lock-timeout", "500ms", "--retries", "4")
    finally:
        watcher.join()
        blocker.close()
    assert watch_failed == []
    assert r.exit_code == 0, r.output
    assert ledger(project, "acme") == ["0001_items", "0002_note"]
    assert _columns(project) == {"id", "note"}


def test_lock_timeout_from_the_config_file(project: Project) -> None:
    with (project.root / "mtm.toml").open("a") as f:
        f.write('lock_timeout = "150ms"\nretries = 1\n')
    blocker = _blocked_project(project)
    try:
        r = project.cli("migrate")
    finally:
        blocker.close()
    assert r.exit_code == 1
    assert "FAILED acme: migration 0002_note: canceling statement due to lock timeout" in (r.output)
    assert "[SQLSTATE 55P03] (tried 2 times)" in r.output


def test_statement_timeout(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write("tenant", "0002_slow.sql", "CREATE TABLE slow (id int);\nSELECT pg_sleep(5);")
    r = project.cli("migrate", "--statement-timeout", "300ms")
    assert r.exit_code == 1
    assert "canceling statement due to statement timeout" in r.output
    assert "tried" not in r.output  # not retried: a slow statement stays slow
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items"}


@pytest.mark.slow
def test_two_creates_of_one_tenant_at_once(project: Project) -> None:
    """Both pass the checks before either commits; the second waits for the schema's
    lock, then fails with a clear message, leaving the first tenant whole."""
    project.write(
        "tenant",
        "0001_items.sql",
        f"SELECT pg_advisory_xact_lock({GATE});\nCREATE TABLE items (id int);",
    )
    assert project.cli("migrate").exit_code == 0  # the registry exists
    with gate(project) as g:
        first = spawn(project, "create", "dup", "--domain", "dup.example.com")
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="the first create")
            second = spawn(project, "create", "dup", "--domain", "dup.example.com")
            wait_until(
                lambda: waiting_on_schema_locks(project) == 1,
                message="the second create waiting for the schema's lock",
            )
            g.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            _, err1 = first.communicate(timeout=30)
            _, err2 = second.communicate(timeout=30)
        finally:
            for p in (first,):
                if p.poll() is None:
                    p.kill()
    assert first.returncode == 0, err1
    assert second.returncode == 2
    assert err2.strip() == "error: tenant 'dup' already exists"
    assert ledger(project, "dup") == ["0001_items"]
    assert project.query("SELECT schema_name FROM public.tenants_domains") == [("dup",)]
