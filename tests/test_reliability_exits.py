"""Every way out of a step is accounted for, and no-transaction steps hold their schema.

A migration that calls ``sys.exit``, a connection killed under a Python step, and a
``down`` of a no-transaction migration racing a ``migrate`` must each end in a report
that matches what the database holds: exit 1 with a one-line reason (no traceback) and
every schema at a clean step.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from _reliability import (
    index_valid,
    ledger,
    schema_lock_held,
    spawn,
    tables,
    wait_until,
    waiting_on_gate,
    waiting_on_schema_locks,
)
from conftest import Project, _libpq

GATE = 4646


def _assert_failed_cleanly(proc_out: str, proc_err: str, code: int) -> None:
    assert code == 1, (code, proc_out, proc_err)
    assert "Traceback" not in proc_out + proc_err, proc_out + proc_err


@pytest.mark.parametrize("how", ['sys.exit("boom")', "sys.exit(0)", "raise SystemExit(3)"])
def test_a_tenant_migration_that_exits_fails_the_run(project: Project, how: str) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    for schema in ("acme", "globex"):
        assert project.cli("create", schema).exit_code == 0
    project.write(
        "tenant",
        "0002_exit.py",
        f"""
        import sys


        def up(op):
            op.execute("CREATE TABLE two (id int)")
            {how}
        """,
    )
    r = project.run("migrate")
    _assert_failed_cleanly(r.stdout, r.stderr, r.returncode)
    assert "0002_exit" in r.stdout + r.stderr
    for schema in ("acme", "globex"):
        assert ledger(project, schema) == ["0001_items"]
        assert tables(project, schema) == {"items"}

    r = project.run("migrate", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is False


def test_a_public_migration_that_exits_zero_is_a_failure(project: Project) -> None:
    project.write(
        "public",
        "0001_plans.py",
        """
        import sys


        def up(op):
            op.execute("CREATE TABLE plans (id int)")
            sys.exit(0)
        """,
    )
    r = project.run("migrate")
    _assert_failed_cleanly(r.stdout, r.stderr, r.returncode)
    assert "0001_plans" in r.stdout + r.stderr
    assert project.scalar("SELECT to_regclass('public.plans')") is None
    assert ledger(project, "public") == []


def test_a_connection_killed_under_a_python_step(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write(
        "tenant",
        "0002_slow.py",
        f"""
        def up(op):
            op.execute("CREATE TABLE two (id int)")
            op.execute("SELECT pg_advisory_lock({GATE})")
            op.execute("CREATE TABLE three (id int)")
        """,
    )
    with psycopg.connect(_libpq(project.url), autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        proc = spawn(project, "migrate")
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, 30, "the step at the gate")
            gate.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND NOT granted AND classid = 0 AND objid = %s",
                (GATE,),
            )
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    _assert_failed_cleanly(out, err, proc.returncode)
    assert "0002_slow" in out + err
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items"}
    # The next run completes.
    r = project.run("migrate")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ledger(project, "acme") == ["0001_items", "0002_slow"]


INDEX = """\
-- mtm:no-transaction
SELECT pg_advisory_lock({gate}) WHERE {up};
SELECT pg_advisory_unlock({gate}) WHERE {up};
CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_idx ON items (id);
-- mtm:down
SELECT pg_advisory_lock({gate}) WHERE {down};
SELECT pg_advisory_unlock({gate}) WHERE {down};
DROP INDEX CONCURRENTLY IF EXISTS items_id_idx;
"""


def test_down_of_a_no_transaction_step_holds_the_schema_against_a_migrate(
    project: Project,
) -> None:
    """A migrate that comes while down runs a no-transaction revert waits for it, then
    plans again: it never records a step on top of a ledger row about to be deleted."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    project.write("tenant", "0002_index.sql", INDEX.format(gate=GATE, up="false", down="true"))
    assert project.cli("create", "acme").exit_code == 0
    assert index_valid(project, "acme") is True

    with psycopg.connect(_libpq(project.url), autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        down = spawn(project, "down", "--tenant", "acme")
        migrate = None
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, 30, "down at the gate")
            # The revert's statements are running: the schema is still locked.
            assert schema_lock_held(project, "acme")
            project.write("tenant", "0003_three.sql", "CREATE TABLE three (id int);")
            migrate = spawn(project, "migrate", "--lock-wait", "60")
            wait_until(
                lambda: migrate.poll() is not None or waiting_on_schema_locks(project) == 1,
                60,
                "migrate waiting for acme's lock",
            )
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            d_out, d_err = down.communicate(timeout=60)
            m_out, m_err = migrate.communicate(timeout=60)
        finally:
            for proc in (down, migrate):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    assert down.returncode == 0, d_out + d_err
    assert migrate.returncode == 0, m_out + m_err
    assert ledger(project, "acme") == ["0001_items", "0002_index", "0003_three"]
    assert index_valid(project, "acme") is True
    assert project.run("validate").returncode == 0


def test_up_of_a_no_transaction_step_holds_the_schema_and_a_waiter_does_not_stall_it(
    project: Project,
) -> None:
    """While a CREATE INDEX CONCURRENTLY step runs, the schema stays locked; a down that
    waits for that lock must not hold a snapshot the index build would wait for."""
    project.write(
        "tenant", "0001_items.sql", "CREATE TABLE items (id int);\n-- mtm:down\nDROP TABLE items;"
    )
    assert project.cli("create", "acme").exit_code == 0
    project.write("tenant", "0002_index.sql", INDEX.format(gate=GATE, up="true", down="false"))

    with psycopg.connect(_libpq(project.url), autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        migrate = spawn(project, "migrate", "--lock-timeout", "60s")
        down = None
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, 30, "migrate at the gate")
            assert schema_lock_held(project, "acme")
            down = spawn(project, "down", "--tenant", "acme")
            wait_until(
                lambda: down.poll() is not None or waiting_on_schema_locks(project) == 1,
                60,
                "down waiting for acme's lock",
            )
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            m_out, m_err = migrate.communicate(timeout=60)
            d_out, d_err = down.communicate(timeout=60)
        finally:
            for proc in (migrate, down):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    assert migrate.returncode == 0, m_out + m_err
    assert "deadlock" not in (m_out + m_err + d_out + d_err).lower()
    assert index_valid(project, "acme") is True
    # down planned to revert 0001 under a ledger that has moved since: it must refuse,
    # reverting nothing.
    assert down.returncode == 1, d_out + d_err
    assert ledger(project, "acme") == ["0001_items", "0002_index"]
    assert "Traceback" not in d_out + d_err
    assert project.run("validate").returncode == 0
