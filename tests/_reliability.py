"""Helpers of the reliability tests: real mtm processes, waiting, and consistency checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Project
from mtm.locks import RUN_LOCK_CLASS, SCHEMA_LOCK_CLASS


def _default_sigint() -> None:
    # A test runner started in the background (``pytest &``, some CI harnesses) has
    # SIGINT ignored, and children inherit that; Python then installs no Ctrl-C
    # handler at all. Give the child the default back, as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ``python -m mtm`` whose Ctrl-C handler first creates a file, then raises
# KeyboardInterrupt exactly as Python's own handler does: the file tells the test that
# the process has taken the interrupt, instead of a sleep guessing how long that takes.
_MARKING_CTRL_C = """
import runpy, signal, sys
marker = sys.argv[1]
def on_ctrl_c(signum, frame):
    open(marker, "w").close()
    raise KeyboardInterrupt
signal.signal(signal.SIGINT, on_ctrl_c)
sys.argv = ["mtm", *sys.argv[2:]]
runpy.run_module("mtm", run_name="__main__", alter_sys=True)
"""


def spawn(project: Project, *args: str, ctrl_c_marker: Path | None = None) -> subprocess.Popen[str]:
    """Start ``python -m mtm ARGS`` as a real process in the project folder.

    With ``ctrl_c_marker``, the process creates that file when it takes a Ctrl-C.
    """
    env = {k: v for k, v in os.environ.items() if k != "MTM_DATABASE_URL"}
    command = [sys.executable, "-m", "mtm", *args]
    if ctrl_c_marker is not None:
        command = [sys.executable, "-c", _MARKING_CTRL_C, str(ctrl_c_marker), *args]
    return subprocess.Popen(
        command,
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )


def wait_until(what: Callable[[], object], timeout: float = 60.0, message: str = "") -> None:
    """Poll ``what`` until it is true, or fail the test after ``timeout`` seconds.

    The deadline only catches a condition that never comes; it is generous because two
    suites on a busy machine can each take seconds to get where the test waits.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or what}")


# Advisory locks are server-wide: another test run on the same server (the shared
# PostgreSQL 15, say) takes the same gate numbers, so each count keeps to this database.
_THIS_DATABASE = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"


def run_lock_pids(project: Project) -> list[int]:
    """Backends holding mtm's run lock in the project's database."""
    return [
        r[0]
        for r in project.query(
            "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid = %s AND l.objsubid = 2 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (RUN_LOCK_CLASS,),
        )
    ]


def schema_lock_held(project: Project, schema: str) -> bool:
    """Whether some session holds the per-schema lock of ``schema`` right now."""
    return bool(
        project.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = %s AND objid = hashtext(%s)::oid AND objsubid = 2 "
            f"AND {_THIS_DATABASE})",
            (SCHEMA_LOCK_CLASS, schema),
        )
    )


def waiting_on_gate(project: Project, gate: int) -> int:
    """How many sessions wait for the test's gate (an advisory lock on ``gate``)."""
    return int(
        project.scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            f"AND classid = 0 AND objid = %s AND {_THIS_DATABASE}",
            (gate,),
        )
    )


def waiting_on_schema_locks(project: Project) -> int:
    """How many of the database's sessions wait for some schema's lock right now: mtm
    waits outside the server, saying so in its application_name (``locks.waiting_for``)."""
    return int(
        project.scalar(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE 'waiting for schema %%' "
            "AND datname = current_database()",
            (),
        )
    )


def ledger(project: Project, schema: str) -> list[str]:
    """Names in a schema's ledger, in order ([] when it has none)."""
    if not project.scalar("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".mtm_migrations',)):
        return []
    return [
        r[0] for r in project.query(f'SELECT name FROM "{schema}".mtm_migrations ORDER BY name')
    ]


def tables(project: Project, schema: str) -> set[str]:
    """Tables of a schema other than the ledger."""
    return {
        r[0]
        for r in project.query(
            "SELECT tablename FROM pg_tables "
            "WHERE schemaname = %s AND tablename <> 'mtm_migrations'",
            (schema,),
        )
    }


def fingerprint_row(project: Project, schema: str) -> str | None:
    return project.scalar(
        "SELECT fingerprint FROM public.mtm_migrations_state WHERE schema_name = %s", (schema,)
    )


def index_valid(project: Project, schema: str, index: str = "items_id_idx") -> bool | None:
    """Whether ``schema``'s index is valid (None: there is no such index)."""
    return project.scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, index),
    )
