"""The kept connection as an object its caller owns: ``with mtm.connect(config) as db``.

Creates in a row share one backend, each handed back clean; closing the object closes
it; ``mtm.create`` alone opens and closes its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import mtm
from _reliability import wait_until
from conftest import Project
from mtm import placement
from mtm.database import APART, checkout, create_engine

# A migration that leaves session state behind: a setting, an advisory lock and a
# temporary table (which a second create on an unreset session would trip over).
LEAKY = (
    "CREATE TABLE items AS SELECT pg_backend_pid() AS pid;\n"
    "CREATE TEMP TABLE scratch (x int);\n"
    "SELECT set_config('application_name', 'leaky', false), pg_advisory_lock(4242);"
)


def _create_backends(project: Project) -> list[tuple[int, str]]:
    return project.query(
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND application_name IN ('mtm create', 'leaky')"
    )


def test_creates_through_one_database_share_one_clean_backend(project: Project) -> None:
    project.write("tenant", "0001_leaky.sql", LEAKY)
    pids = set()
    with mtm.connect(project.config) as db:
        for name in ("a1", "a2", "a3"):
            assert db.create(name, domains=[f"{name}.example.com"]).applied == ["0001_leaky"]
            backends = _create_backends(project)
            # One kept backend, its setting reset when it came back.
            assert [app for _, app in backends] == ["mtm create"]
            pid = backends[0][0]
            pids.add(pid)
            held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s"
            assert project.scalar(held, (pid,)) == 0  # its advisory lock was released
        assert len(pids) == 1
        seen = {project.scalar(f"SELECT pid FROM {name}.items") for name in ("a1", "a2", "a3")}
        assert seen == pids  # the creates ran on that one backend
        # The kept connection dies (a restart, an administrator): the next create reconnects.
        project.query("SELECT pg_terminate_backend(%s)", (pids.pop(),))
        assert db.create("a4").applied == ["0001_leaky"]
        assert not db.closed
    assert db.closed
    wait_until(lambda: not _create_backends(project), message="closing db closes its backend")
    assert project.schemas() >= {"a1", "a2", "a3", "a4"}
    with pytest.raises(mtm.MtmError, match="closed"):
        db.create("a5")
    assert "a5" not in project.schemas()


def test_create_alone_opens_and_closes_its_connection(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    result = mtm.create(project.config, "solo")
    assert result.tenant.schema == "solo"
    wait_until(lambda: not _create_backends(project), message="mtm.create left a connection")


def test_a_kept_backend_is_replaced_after_its_share_of_creates(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backend's catalog caches grow with every schema it creates; after
    # CALLS_PER_BACKEND calls the kept connection is closed and the next call opens a
    # new one. The creates around each replacement are whole and at head, and no
    # backend is left behind.
    from mtm import database

    monkeypatch.setattr(database, "CALLS_PER_BACKEND", 3)
    project.write("tenant", "0001_leaky.sql", LEAKY)
    names = [f"r{i}" for i in range(7)]
    with mtm.connect(project.config) as db:
        for name in names:
            assert db.create(name).applied == ["0001_leaky"]
            # Never more than the one kept backend, even just after a replacement.
            assert len(_create_backends(project)) <= 1
        assert not db.closed
    pids = [project.scalar(f"SELECT pid FROM {name}.items") for name in names]
    # Three creates a backend: r0-r2 on one, r3-r5 on the next, r6 on a third.
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    assert len(set(pids)) == 3
    wait_until(lambda: not _create_backends(project), message="closing db closes its backend")
    assert project.schemas() >= set(names)
    r = project.cli("migrate")
    assert r.exit_code == 0 and "nothing to do: public and 7 tenants at head" in r.output, r.output


def test_a_command_connection_asks_the_server_only_what_mtm_needs(
    project: Project, tmp_path: Path
) -> None:
    """Opening mtm's own engine: SQLAlchemy's first-connect questions and mtm's Citus
    note, and no lookup of the hstore type (a transaction and a catalog query that
    every command paid before), counted in the protocol."""
    trace = tmp_path / "trace"
    engine = create_engine(project.config)

    # Before SQLAlchemy's own first-connect listener (the dialect's questions).
    @sa.event.listens_for(engine, "first_connect", insert=True)
    def _trace(dbapi: Any, record: Any) -> None:
        dbapi.pgconn.trace(os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND))

    try:
        with checkout(engine) as conn:
            assert conn.info[APART] is False
            assert placement.on_citus(conn) is False  # from the note: no query
    finally:
        engine.dispose()
    sent = [line for line in trace.read_text().splitlines() if "\tF\t" in line]
    texts = [line for line in sent if "\tQuery\t" in line or "\tParse\t" in line]
    assert not [t for t in texts if "hstore" in t or "pg_type" in t], texts
    assert len([t for t in texts if "pg_extension" in t]) == 1, texts
    assert len(texts) <= 5, texts  # version, schema, isolation, strings, Citus note
