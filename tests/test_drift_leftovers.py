"""Reference schemas a killed ``mtm diff`` left behind, and the shared-snapshot read.

The diff is killed with SIGKILL while it builds its reference: a no-transaction tenant
migration waits on an advisory lock the test holds, so the reference schema exists
(committed, with its marker) when the process dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psycopg
import pytest

import mtm
from conftest import Project, _libpq
from mtm import catalog, catalogread
from mtm.database import checkout, create_engine
from mtm.references import MARKER, REFERENCE_PREFIX, remove_leftovers
from test_drift import make_fleet, references, setup

GATE = 4242  # the advisory lock the gate migration waits on


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Poll ``condition`` until it holds (``limit`` only stops a hung test)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def diff_backends(project: Project) -> list[tuple[int, str | None]]:
    return [
        (r[0], r[1])
        for r in project.query(
            "SELECT pid, wait_event FROM pg_stat_activity "
            "WHERE application_name = 'mtm diff' AND datname = current_database()"
        )
    ]


def test_a_reference_left_by_a_killed_diff_is_dropped_by_the_next(project: Project) -> None:
    setup(project)
    project.write(
        "tenant",
        "0004_gate.sql",
        f"-- mtm:no-transaction\nSELECT pg_advisory_lock({GATE});\n"
        f"SELECT pg_advisory_unlock({GATE});\n",
    )
    assert project.cli("migrate").exit_code == 0
    assert project.cli("create", "acme").exit_code == 0
    project.query("CREATE SCHEMA mtm_reference_notmine")  # the name alone proves nothing
    env = {k: v for k, v in os.environ.items() if k != "MTM_DATABASE_URL"}
    with psycopg.connect(_libpq(project.url), autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        proc = subprocess.Popen(
            [sys.executable, "-m", "mtm", "diff"],
            cwd=project.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                lambda: any(w == "advisory" for _, w in diff_backends(project)),
                "the diff's reference build to wait at the gate",
            )
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        (schema,) = set(references(project)) - {"mtm_reference_notmine"}
        assert (
            project.scalar(
                "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
                (schema,),
            )
            == MARKER
        )
        # Its backend still waits at the gate and holds the reference's lock: not taken.
        engine = create_engine(project.config, pool_size=1)
        try:
            with checkout(engine) as conn:
                assert remove_leftovers(conn, project.config) == []
        finally:
            engine.dispose()
        assert schema in project.schemas()
        gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
    # The orphaned backend finishes its statement, finds its client gone and ends.
    wait_for(lambda: diff_backends(project) == [], "the killed diff's backend to end")
    result = project.cli("diff")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        f"dropped {schema}, a reference schema left behind by a diff that was killed"
    )
    assert lines[-1] == "1 tenant compared at 1 step: no differences"
    assert references(project) == ["mtm_reference_notmine"]
    # mtm_reference_notmine has no marker: never dropped, and never mentioned again.
    again = mtm.diff(project.config)
    assert again.ok and again.removed == []


def test_the_json_output_names_the_dropped_leftover(project: Project) -> None:
    """A leftover made by hand exactly as a reference is (name, marker, no lock)."""
    setup(project)
    make_fleet(project, ["acme"])
    schema = REFERENCE_PREFIX + "0123456789ab"
    project.query(f"CREATE SCHEMA {schema}")
    project.query(f"COMMENT ON SCHEMA {schema} IS '{MARKER}'")
    result = project.cli("diff", "--json")
    assert result.exit_code == 0, result.output
    assert '"removed": [\n    "mtm_reference_0123456789ab"\n  ]' in result.output
    assert references(project) == []


def test_chunks_split_evenly_and_keep_small_fleets_whole() -> None:
    names = [f"t{i}" for i in range(1000)]
    assert catalogread.chunks(names, 2) == [names[:500], names[500:]]
    assert catalogread.chunks(names, 1) == [names]
    assert catalogread.chunks(names[:799], 2) == [names[:799]]
    assert catalogread.chunks([], 4) == [[]]
    more = [f"t{i}" for i in range(1201)]
    parts = catalogread.chunks(more, 3)
    assert [len(p) for p in parts] == [401, 401, 399] and [n for p in parts for n in p] == more


def test_the_chunks_read_one_snapshot(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection sees the moment the first one exported: tenants changed after
    it (on another connection) read as before on all of them, and the chunks together
    give exactly what one query gives."""
    setup(project)
    names = [f"t{i:02d}" for i in range(8)]
    make_fleet(project, names)
    monkeypatch.setattr(catalogread, "MIN_CHUNK", 2)
    engine = create_engine(project.config, pool_size=4)
    try:
        with checkout(engine) as conn:
            whole = catalog.fingerprints(conn, names)
            assert len(set(whole.values())) == 1
            with catalogread.snapshot(conn) as moment:
                project.query("ALTER TABLE t07.customers ADD COLUMN late int")
                project.query("CREATE TABLE t01.late (id int)")
                seen = catalogread.fingerprints(
                    engine, conn, moment, names, exclude=(), connections=4
                )
            assert seen == whole
            after = catalog.fingerprints(conn, names)
            assert after["t01"] != whole["t01"] and after["t07"] != whole["t07"]
    finally:
        engine.dispose()


def test_a_tenant_dropped_while_diff_reads_is_read_again(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant schema dropped by hand after the snapshot began makes the server's
    catalog functions fail ("cache lookup failed"): diff reads again, and the tenant,
    still registered, is reported as not compared."""
    setup(project)
    make_fleet(project, ["acme", "beta"])
    original = catalogread.fingerprints
    calls: list[int] = []

    def drop_first(*args: object, **kwargs: object) -> dict[str, str]:
        calls.append(1)
        if len(calls) == 1:
            project.query("DROP SCHEMA beta CASCADE")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(catalogread, "fingerprints", drop_first)
    result = mtm.diff(project.config)
    assert len(calls) == 2
    assert result.not_compared == ["beta: not compared: the schema does not exist"]
    assert [g.tenants for g in result.groups] == [("acme",)] and not result.drifted
    assert references(project) == []
