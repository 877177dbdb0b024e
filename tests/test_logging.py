"""Log records: mtm logs under ``mtm.<area>`` with an ``event`` and fields, and never
configures handlers. (The CLI's -v and --log-format flags render these records.)"""

from __future__ import annotations

import logging
import subprocess
import sys

import psycopg
import pytest

import mtm
from conftest import Project, _libpq


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def test_migrate_logs_each_step_and_the_run(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    project.write("public", "0001_plans.sql", "CREATE TABLE public.plans (id int);")
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    project.write("tenant", "0002_tag.sql", "ALTER TABLE items ADD COLUMN tag text;")
    for name in ("t1", "t2"):
        assert project.cli("create", name, "--no-migrate").exit_code == 0
    caplog.set_level(logging.INFO, logger="mtm")
    assert mtm.migrate(project.config, jobs=2).ok

    starts = _events(caplog, "step.start")
    ends = _events(caplog, "step.end")
    expected = {
        ("public", "public", "0001_plans"),
        *((s, "tenant", m) for s in ("t1", "t2") for m in ("0001_items", "0002_tag")),
    }
    assert {(r.schema, r.namespace, r.migration) for r in starts} == expected  # type: ignore[attr-defined]
    assert {(r.schema, r.namespace, r.migration) for r in ends} == expected  # type: ignore[attr-defined]
    assert len(starts) == len(ends) == 5
    for r in ends:
        assert r.name == "mtm.step" and r.levelno == logging.INFO
        assert r.direction == "up"  # type: ignore[attr-defined]
        assert isinstance(r.duration_ms, float) and r.duration_ms >= 0  # type: ignore[attr-defined]
    # Within a schema, steps start in order and each ends before the next starts.
    t1 = [(r.event, r.migration) for r in caplog.records if getattr(r, "schema", None) == "t1"]  # type: ignore[attr-defined]
    assert t1 == [
        ("step.start", "0001_items"),
        ("step.end", "0001_items"),
        ("step.start", "0002_tag"),
        ("step.end", "0002_tag"),
    ]
    (start,) = _events(caplog, "run.start")
    (end,) = _events(caplog, "run.end")
    assert start.name == end.name == "mtm.run"
    assert (start.schemas, start.steps, start.jobs) == (3, 5, 2)  # type: ignore[attr-defined]
    assert (end.steps, end.failed) == (5, 0)  # type: ignore[attr-defined]
    assert caplog.records.index(start) < caplog.records.index(starts[0])
    assert caplog.records.index(end) > caplog.records.index(ends[-1])
    # the library adds no handler that outputs: only the NullHandler of mtm/__init__.py
    assert [type(h) for h in logging.getLogger("mtm").handlers] == [logging.NullHandler]


def test_retry_and_failure_are_logged(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    mtm.create(project.config, "t1")
    project.write("tenant", "0002_tag.sql", "ALTER TABLE items ADD COLUMN tag text;")
    caplog.set_level(logging.INFO, logger="mtm")
    with psycopg.connect(_libpq(project.url)) as blocker:
        blocker.execute("LOCK TABLE t1.items IN ACCESS EXCLUSIVE MODE")
        result = mtm.migrate(project.config, lock_timeout="50ms", retries=1)
    assert not result.ok
    (retry,) = _events(caplog, "step.retry")
    assert retry.levelno == logging.WARNING and retry.name == "mtm.step"
    assert (retry.schema, retry.migration, retry.attempt) == ("t1", "0002_tag", 2)  # type: ignore[attr-defined]
    assert "lock timeout" in retry.error  # type: ignore[attr-defined]
    (failed,) = _events(caplog, "step.failed")
    assert failed.levelno == logging.ERROR
    assert (failed.schema, failed.migration) == ("t1", "0002_tag")  # type: ignore[attr-defined]
    assert "tried 2 times" in failed.error  # type: ignore[attr-defined]
    assert _events(caplog, "run.end")[0].failed == 1  # type: ignore[attr-defined]


def test_create_and_drop_are_logged(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    caplog.set_level(logging.INFO, logger="mtm")
    mtm.create(project.config, "acme")
    mtm.drop(project.config, "acme", yes=True)
    (created,) = _events(caplog, "tenant.create")
    assert created.name == "mtm.tenant" and created.schema == "acme"  # type: ignore[attr-defined]
    assert created.applied == 1 and created.duration_ms >= 0  # type: ignore[attr-defined]
    (dropped,) = _events(caplog, "tenant.drop")
    assert dropped.schema == "acme" and dropped.levelno == logging.INFO  # type: ignore[attr-defined]


def test_a_lock_wait_is_logged(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    from mtm.locks import RUN_LOCK_CLASS, run_lock_key

    caplog.set_level(logging.INFO, logger="mtm")
    with psycopg.connect(_libpq(project.url), autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s, %s)", (RUN_LOCK_CLASS, run_lock_key(project.config))
        )
        with pytest.raises(mtm.MtmError, match="holds the migration lock"):
            mtm.migrate(project.config, lock_wait=0.3)
    (wait,) = _events(caplog, "lock.wait")
    assert wait.name == "mtm.lock" and wait.lock == "run"  # type: ignore[attr-defined]
    (gave_up,) = _events(caplog, "lock.timeout")
    assert gave_up.waited_ms >= 300  # type: ignore[attr-defined]


def test_the_library_prints_no_record_without_the_applications_logging() -> None:
    """Without a handler, stdlib logging would print WARNING and above on stderr
    (``logging.lastResort``); the library's NullHandler keeps it silent."""
    code = (
        "import logging, mtm\n"
        "logging.getLogger('mtm.step').error('step failed', extra={'event': 'step.failed'})\n"
        "logging.getLogger('mtm.run').warning('retry', extra={'event': 'step.retry'})\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("", "")
