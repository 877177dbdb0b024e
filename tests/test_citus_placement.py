"""Tenants' placement on a Citus cluster: each tenant's node in ``mtm status``, ``mtm move``
(online, under the tenant's lock, refused before anything moves when it cannot be
online or cannot work) and ``mtm rebalance``."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest

from _citus import CitusCluster
from conftest import Project, make_project
from mtm import commands
from mtm.locks import SCHEMA_LOCK_CLASS

pytestmark = pytest.mark.citus

ITEMS = "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);\n"


def distributed(project: Project, *tenants: str) -> None:
    """Create tenants with mtm and make each a distributed schema (Citus places it)."""
    for tenant in tenants:
        result = project.cli("create", tenant)
        assert result.exit_code == 0, result.output
        project.query("SELECT citus_schema_distribute(%s)", (tenant,))


def nodes(project: Project) -> dict[str, str]:
    result = project.cli("status", "--json")
    assert result.exit_code == 0, result.output
    return {t["schema"]: t["node"] for t in json.loads(result.output)["tenants"]}


def workers(cluster: CitusCluster) -> list[str]:
    return [f"127.0.0.1:{w.port}" for w in cluster.worker_nodes]


@pytest.fixture
def placed(tmp_path: Path, citus_url: str) -> Project:
    project = make_project(tmp_path / "app", citus_url)
    project.write("tenant", "0001_items.sql", ITEMS)
    return project


def test_move_takes_a_tenants_data_and_ledger_to_the_other_worker_and_status_follows(
    placed: Project, citus_cluster: CitusCluster
) -> None:
    project = placed
    distributed(project, "acme", "globex")
    project.query("INSERT INTO acme.items SELECT g, 'item ' || g FROM generate_series(1, 500) g")
    before = nodes(project)
    assert set(before.values()) <= set(workers(citus_cluster))
    source = before["acme"]
    (target,) = [w for w in workers(citus_cluster) if w != source]
    history = project.cli("history", "--tenant", "acme", "--json").output
    table = project.cli("status").output
    assert "node" in table and source in table

    result = project.cli("move", "acme", "--to", target)

    assert result.exit_code == 0, result.output
    assert f"moved acme from {source} to {target}" in result.output
    after = nodes(project)
    assert after == {"acme": target, "globex": before["globex"]}
    assert project.scalar("SELECT count(*) FROM acme.items") == 500
    assert project.scalar("SELECT name FROM acme.items WHERE id = 500") == "item 500"
    assert project.cli("history", "--tenant", "acme", "--json").output == history
    status = json.loads(project.cli("status", "--json").output)
    assert [t["applied"] for t in status["tenants"]] == [1, 1]
    assert project.cli("validate").exit_code == 0
    # The ledger is a table of the tenant's schema: it moved with the data...
    ledger = f"acme.{project.config.migrations_table}"
    placements = project.query(
        "SELECT DISTINCT nodeport FROM citus_shards WHERE table_name = ANY(%s::regclass[])",
        ([ledger, "acme.items"],),
    )
    assert placements == [(int(target.rsplit(":", 1)[1]),)]
    # ...while the registry and the state summary stay on the coordinator, as plain tables.
    citus_tables = project.query(
        "SELECT logicalrelid::text FROM pg_dist_partition WHERE logicalrelid::text LIKE 'public.%'"
    )
    assert citus_tables == []
    again = project.cli("move", "acme", "--to", target)
    assert again.exit_code == 0
    assert f"acme is on {target} already; nothing moved" in again.output


def test_move_refuses_before_anything_moves_and_says_why(
    placed: Project, citus_cluster: CitusCluster
) -> None:
    project = placed
    distributed(project, "acme", "keyless")
    # A schema Citus does not place: created with distributed = false (unset, it is detected).
    r = project.run("create", "plain", env={"MTM_DISTRIBUTED": "false"})
    assert r.returncode == 0, r.stderr
    project.query("CREATE TABLE keyless.logs (line text)")
    before = nodes(project)
    other = {t: next(w for w in workers(citus_cluster) if w != n) for t, n in before.items() if n}
    coordinator = f"127.0.0.1:{citus_cluster.coordinator.port}"

    cases = [
        (("move", "acme", "--to", "127.0.0.1:1"), "127.0.0.1:1 is not a node of this cluster"),
        (("move", "acme", "--to", coordinator), f"{coordinator} is not a node of this cluster"),
        (("move", "acme", "--to", "somewhere"), "--to 'somewhere' is not a node: give HOST:PORT"),
        (("move", "ghost", "--to", other["acme"]), "no tenant 'ghost' is registered"),
        (("move", "plain", "--to", other["acme"]), "tenant plain is not a distributed schema"),
        (
            ("move", "keyless", "--to", other["keyless"]),
            "table keyless.logs has no primary key: an online move needs one on every table",
        ),
    ]
    for args, message in cases:
        result = project.cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert nodes(project) == before


def test_move_waits_for_the_tenants_lock(placed: Project, citus_cluster: CitusCluster) -> None:
    """A move is a change to the tenant: it waits while another command holds its lock
    (a migration, a create, a drop), and never moves a tenant under a running step."""
    project = placed
    distributed(project, "acme")
    source = nodes(project)["acme"]
    (target,) = [w for w in workers(citus_cluster) if w != source]
    done: list[object] = []
    with psycopg.connect(project.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('acme'))", (SCHEMA_LOCK_CLASS,))
        mover = threading.Thread(
            target=lambda: done.append(commands.move_tenant(project.config, "acme", target))
        )
        mover.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"
        with psycopg.connect(project.url, autocommit=True) as watch:
            while not watch.execute(waiting, ("waiting for schema acme%",)).fetchone()[0]:  # type: ignore[index]
                assert mover.is_alive(), done
        assert nodes(project)["acme"] == source
        holder.execute("SELECT pg_advisory_unlock(%s, hashtext('acme'))", (SCHEMA_LOCK_CLASS,))
        mover.join()
    assert nodes(project)["acme"] == target


def test_rebalance_spreads_tenants_over_the_workers_and_reports_progress(
    placed: Project, citus_cluster: CitusCluster
) -> None:
    project = placed
    distributed(project, "t1", "t2")
    first = workers(citus_cluster)[0]

    def crowd() -> None:
        """Both tenants on the first worker: one move for the rebalancer to make."""
        for tenant, node in nodes(project).items():
            if node != first:
                assert project.cli("move", tenant, "--to", first).exit_code == 0
        assert set(nodes(project).values()) == {first}

    crowd()
    started = project.cli("rebalance", "--no-wait")
    assert started.exit_code == 0, started.output
    assert "runs in the background; follow it with" in started.output
    project.query("SELECT citus_rebalance_wait()")
    assert sorted(nodes(project).values()) == sorted(workers(citus_cluster))

    crowd()
    result = project.cli("rebalance")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("rebalance job ") and " of 1 move done" in lines[0]
    assert lines[-1].endswith("finished, 1 of 1 move done")
    assert sorted(nodes(project).values()) == sorted(workers(citus_cluster))
    assert project.cli("validate").exit_code == 0
    nothing = project.cli("rebalance")
    assert nothing.exit_code == 0
    assert "nothing to rebalance: the tenants are spread evenly already" in nothing.output


def test_a_move_that_fails_inside_citus_leaves_the_tenant_where_it_was(
    placed: Project, citus_cluster: CitusCluster
) -> None:
    """Citus fails the move half-way (every replication slot of the source worker is in
    use, so the online copy cannot start): one line naming the error and where the
    tenant stays, exit 2, the tenant whole on its node; once slots are free again the
    same move works. Exit 1: the move was tried, and failed."""
    project = placed
    distributed(project, "acme")
    project.query("INSERT INTO acme.items VALUES (1, 'one'), (2, 'two')")
    source = nodes(project)["acme"]
    (target,) = [w for w in workers(citus_cluster) if w != source]
    worker = next(w for w in citus_cluster.worker_nodes if f"127.0.0.1:{w.port}" == source)
    with psycopg.connect(worker.url(), autocommit=True) as slots:
        free = int(slots.execute("SHOW max_replication_slots").fetchone()[0])  # type: ignore[index]
        free -= int(slots.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0])  # type: ignore[index]
        for n in range(free):
            slots.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"hog{n}",))
        try:
            result = project.run("move", "acme", "--to", target)
        finally:
            for n in range(free):
                slots.execute("SELECT pg_drop_replication_slot(%s)", (f"hog{n}",))

    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"error: moving acme from {source} to {target} failed: all replication slots are in use"
    ), line
    assert line.endswith(
        f"it stays on {source} (see SELECT * FROM citus_schemas on the coordinator)"
    ), line
    assert nodes(project)["acme"] == source
    assert project.query("SELECT id, name FROM acme.items ORDER BY id") == [(1, "one"), (2, "two")]
    assert project.cli("validate").exit_code == 0
    assert project.cli("move", "acme", "--to", target).exit_code == 0
    assert nodes(project)["acme"] == target
    assert project.query("SELECT count(*) FROM acme.items") == [(2,)]


def test_rebalance_while_one_runs_says_so_and_starts_nothing(
    placed: Project, citus_cluster: CitusCluster
) -> None:
    """A rebalance started while Citus's rebalancer is already running (its move held up:
    a SHARE lock on the tenants' tables keeps it from blocking writes at its switch-over)
    is refused in one line naming the running job, exit 2; the running one then ends."""
    project = placed
    distributed(project, "t1", "t2")
    first = workers(citus_cluster)[0]
    for tenant, node in nodes(project).items():
        if node != first:
            assert project.cli("move", tenant, "--to", first).exit_code == 0
    with psycopg.connect(project.url) as holder:
        holder.execute("LOCK TABLE t1.items, t2.items IN SHARE MODE")
        started = project.run("rebalance", "--no-wait", timeout=60)
        assert started.returncode == 0, started.stderr
        again = project.run("rebalance", timeout=60)
        holder.rollback()
    job = project.scalar("SELECT max(job_id) FROM pg_dist_background_job")
    assert again.returncode == 2, again.stderr
    assert again.stderr == (
        f"error: Citus's rebalancer is running already (job {job}): follow it with "
        "SELECT * FROM citus_rebalance_status(), or wait for it with "
        "SELECT citus_rebalance_wait()\n"
    )
    project.query("SELECT citus_rebalance_wait()")
    assert sorted(nodes(project).values()) == sorted(workers(citus_cluster))
