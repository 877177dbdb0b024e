"""A fleet on a Citus cluster from end to end: 50 tenants spread over two workers, a
fleet migration, one tenant moved to the other worker with its data, ledger and status
intact, and a migration that fails on one worker leaving every schema at a clean step."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from _citus import CitusCluster
from conftest import Project, make_project
from mtm import Database
from mtm.commands.tenants import create_in

pytestmark = pytest.mark.citus

TENANTS = [f"tenant_{i:02d}" for i in range(50)]
PLANS = "CREATE TABLE plans (id int PRIMARY KEY);\nINSERT INTO plans VALUES (1);\n"
ITEMS = (
    "CREATE TABLE items (id bigint PRIMARY KEY, plan_id int NOT NULL REFERENCES "
    "public.plans, name text NOT NULL);\n"
)
NOTES = (
    "ALTER TABLE items ADD COLUMN note text;\n"
    "CREATE TABLE tags (id bigint PRIMARY KEY, item_id bigint NOT NULL REFERENCES items);\n"
)
# On one worker only: refuse any DDL on a shard (a table named like items_102008), as a
# worker that fails mid-step would. Created on that worker, not sent to the others.
REFUSING_WORKER = """
SET citus.enable_ddl_propagation TO off;
CREATE FUNCTION public.refuse_shard_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
               WHERE object_identity ~ '_[0-9]+$') THEN
        RAISE EXCEPTION 'this worker refuses the change';
    END IF;
END $$;
CREATE EVENT TRIGGER refuse_shard_ddl ON ddl_command_end
    EXECUTE FUNCTION public.refuse_shard_ddl();
"""


def status(project: Project) -> dict[str, dict[str, object]]:
    result = project.cli("status", "--json")
    assert result.exit_code == 0, result.output
    return {t["schema"]: t for t in json.loads(result.output)["tenants"]}


def test_fifty_tenants_on_two_workers_migrate_move_and_fail_cleanly(
    tmp_path: Path, citus_url: str, citus_cluster: CitusCluster
) -> None:
    project = make_project(tmp_path / "app", citus_url)
    project.write("public", "0001_plans.sql", PLANS + "-- mtm:reference-table plans\n")
    project.write("tenant", "0001_items.sql", ITEMS)
    assert project.cli("migrate").exit_code == 0
    # Until mtm makes distributed tenants itself: every schema created in this database
    # is a distributed schema, placed by Citus.
    database = project.scalar("SELECT current_database()")
    project.query(f'ALTER DATABASE "{database}" SET citus.enable_schema_based_sharding TO on')
    with Database(project.config) as db:
        for tenant in TENANTS:
            create_in(db, tenant)
    for tenant in TENANTS:
        project.query(
            f"INSERT INTO {tenant}.items SELECT g, 1, %s || g FROM generate_series(1, 20) g",
            (tenant,),
        )
    workers = [f"127.0.0.1:{w.port}" for w in citus_cluster.worker_nodes]
    placed = {t: s["node"] for t, s in status(project).items()}
    assert set(placed.values()) == set(workers)  # spread over both workers
    counts = {w: list(placed.values()).count(w) for w in workers}
    line = "tenants per node: " + ", ".join(f"{w} {counts[w]}" for w in sorted(workers))
    assert line in project.cli("status").output

    # A fleet migration through the coordinator, in parallel.
    project.write("tenant", "0002_notes.sql", NOTES)
    result = project.cli("migrate", "--jobs", "4")
    assert result.exit_code == 0, result.output
    assert all(s["applied"] == 2 and not s["pending"] for s in status(project).values())

    # One tenant moves to the other worker: data, ledger and status go with it.
    moved = "tenant_07"
    source = placed[moved]
    (target,) = [w for w in workers if w != source]
    history = project.cli("history", "--tenant", moved, "--json").output
    rows = project.query(f"SELECT * FROM {moved}.items ORDER BY id")
    result = project.cli("move", moved, "--to", target)
    assert result.exit_code == 0, result.output
    after = status(project)
    assert after[moved]["node"] == target
    assert after[moved]["applied"] == 2 and not after[moved]["pending"]
    assert project.query(f"SELECT * FROM {moved}.items ORDER BY id") == rows
    assert project.cli("history", "--tenant", moved, "--json").output == history
    placed[moved] = target

    # A migration that fails on one worker: the tenants there stay at their step, with
    # nothing of it on the worker or the coordinator; the others go on.
    refusing = citus_cluster.worker_nodes[1]
    refused = {t for t, n in placed.items() if n == f"127.0.0.1:{refusing.port}"}
    worker_url = refusing.url(database)
    with psycopg.connect(worker_url, autocommit=True) as worker:
        worker.execute(REFUSING_WORKER)
    project.write("tenant", "0003_flag.sql", "ALTER TABLE items ADD COLUMN flag boolean;\n")
    result = project.cli("migrate", "--jobs", "4", "--continue-on-error")
    assert result.exit_code == 1
    assert "this worker refuses the change" in result.output
    now = status(project)
    assert {t for t, s in now.items() if s["pending"] == ["0003_flag"]} == refused
    assert {t for t, s in now.items() if s["applied"] == 3} == set(TENANTS) - refused
    assert all(not s["problems"] for s in now.values())
    flagged = project.query(
        "SELECT table_schema FROM information_schema.columns "
        "WHERE table_name = 'items' AND column_name = 'flag'"
    )
    assert {r[0] for r in flagged} == set(TENANTS) - refused
    with psycopg.connect(worker_url, autocommit=True) as worker:
        shards = worker.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name ~ '^items_[0-9]+$' AND column_name = 'flag'"
        ).fetchone()
        assert shards == (0,)
        worker.execute("SET citus.enable_ddl_propagation TO off")
        worker.execute("DROP EVENT TRIGGER refuse_shard_ddl")
    assert project.cli("validate").exit_code == 0
    result = project.cli("migrate", "--jobs", "4")
    assert result.exit_code == 0, result.output
    assert all(s["applied"] == 3 for s in status(project).values())
