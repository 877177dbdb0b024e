"""mtm on a Citus cluster: distributed tenant schemas made, migrated and dropped through the
coordinator, what the ``distributed`` key decides, and what a worker's failure leaves."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from _citus import CitusCluster
from conftest import Project, make_project

pytestmark = pytest.mark.citus

CUSTOMERS = """
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL
    REFERENCES customers (id), total numeric NOT NULL DEFAULT 0);
"""
# DDL that Citus sends to the worker as the statement's own text (CHECK, SET NOT NULL,
# CREATE INDEX, RENAME COLUMN): in one script with other statements it would fail there.
TIGHTEN = """
ALTER TABLE customers ADD CONSTRAINT customers_name_ck CHECK (name <> '');
ALTER TABLE customers ALTER COLUMN email SET NOT NULL;
CREATE INDEX orders_customer_idx ON orders (customer_id);
ALTER TABLE orders RENAME COLUMN total TO amount;
-- mtm:down
ALTER TABLE orders RENAME COLUMN amount TO total;
DROP INDEX orders_customer_idx;
ALTER TABLE customers ALTER COLUMN email DROP NOT NULL;
ALTER TABLE customers DROP CONSTRAINT customers_name_ck;
"""


def _worker_query(cluster: CitusCluster, url: str, sql: str) -> list[tuple[object, ...]]:
    """``sql`` on every worker's copy of the test database, the rows of all of them."""
    name = make_url(url).database or ""
    rows: list[tuple[object, ...]] = []
    for worker in cluster.worker_nodes:
        with psycopg.connect(worker.url(name), autocommit=True) as conn:
            conn.execute("SET citus.override_table_visibility TO off")  # shards shown
            rows += conn.execute(sql).fetchall()  # type: ignore[arg-type]
    return rows


def _placed(p: Project, schema: str) -> list[tuple[object, ...]]:
    """The (table, worker port) of each of ``schema``'s tables."""
    return p.query(
        "SELECT table_name::text, nodeport FROM citus_shards "
        "WHERE table_name::text LIKE %s ORDER BY 1",
        (f"{schema}.%",),
    )


def _distributed(p: Project) -> set[str]:
    return {r[0] for r in p.query("SELECT schema_name::text FROM citus_schemas")}


def test_a_tenant_lives_on_one_worker_from_create_to_drop(
    project: Project, citus_cluster: CitusCluster
) -> None:
    """create makes a distributed schema (tables, ledger and role in its one transaction),
    a failed create leaves nothing on any node, and migrate (DDL Citus sends as text),
    down, status, validate and drop all go through the coordinator."""
    p = project
    p.write("public", "0001_plans.sql", "CREATE TABLE plans (id int PRIMARY KEY);")
    p.write("tenant", "0001_customers.sql", CUSTOMERS)
    p.write("tenant", "0002_seed.py", SEED_PY)
    r = p.cli("-v", "create", "acme", "--domain", "acme.example.com", "--role")
    assert r.exit_code == 0, r.output
    assert "distributed=True" in r.output  # the create's INFO record says so
    assert _distributed(p) == {"acme"}
    placed = _placed(p, "acme")
    assert [t for t, _ in placed] == ["acme.customers", "acme.mtm_migrations", "acme.orders"]
    assert len({port for _, port in placed}) == 1  # together, on one worker
    assert {port for _, port in placed} <= {w.port for w in citus_cluster.worker_nodes}
    assert p.query("SELECT name FROM acme.customers") == [("seeded by 0002",)]
    ledger = p.query("SELECT name FROM acme.mtm_migrations ORDER BY 1")
    assert ledger == [("0001_customers",), ("0002_seed",)]
    assert p.scalar("SELECT applied FROM public.mtm_migrations_state WHERE schema_name = 'acme'")

    # A create failing in its last migration leaves nothing, on the coordinator or a worker.
    p.write("tenant", "0003_broken.sql", "ALTER TABLE customers ADD COLUMN x int;\nSELECT 1 / 0;")
    r = p.cli("create", "globex")
    assert r.exit_code != 0 and "nothing was left behind" in r.output
    assert _distributed(p) == {"acme"}
    assert p.scalar("SELECT count(*) FROM public.tenants WHERE schema_name = 'globex'") == 0
    assert (
        _worker_query(citus_cluster, p.url, "SELECT 1 FROM pg_namespace WHERE nspname = 'globex'")
        == []
    )
    (p.migrations / "tenant" / "0003_broken.sql").unlink()

    p.write("tenant", "0003_tighten.sql", TIGHTEN)
    r = p.cli("migrate")
    assert r.exit_code == 0, r.output
    columns = "SELECT attname FROM pg_attribute WHERE attrelid = 'acme.orders'::regclass"
    assert ("amount",) in p.query(columns)
    shard_columns = (
        "SELECT attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'acme' AND c.relname ~ '^orders_[0-9]+$' AND attname = 'amount'"
    )
    assert _worker_query(citus_cluster, p.url, shard_columns) == [("amount",)]
    r = p.cli("status")
    assert r.exit_code == 0 and "1 at head" in r.output, r.output
    assert p.cli("validate").exit_code == 0
    r = p.cli("down", "--tenant", "acme")
    assert r.exit_code == 0, r.output
    assert ("total",) in p.query(columns)
    assert p.cli("migrate").exit_code == 0
    r = p.cli("drop", "acme", "--yes")
    assert r.exit_code == 0, r.output
    assert _distributed(p) == set()
    assert (
        _worker_query(citus_cluster, p.url, "SELECT 1 FROM pg_namespace WHERE nspname = 'acme'")
        == []
    )


SEED_PY = '''
"""A Python migration on a distributed schema: Alembic's op through the coordinator."""


def up(op):
    op.execute("INSERT INTO customers (name, email) VALUES ('seeded by 0002', 'a@example.com')")


def down(op):
    op.execute("DELETE FROM customers")
'''


def test_the_distributed_key_decides_what_create_makes(
    tmp_path: Path, citus_url: str, citus_cluster: CitusCluster
) -> None:
    """Unset: detected (distributed on a cluster with workers), said at -v; false: a plain
    schema on the coordinator, even with sharding on for the whole database; true
    without the citus extension: refused, naming the key, nothing created."""
    auto = make_project(tmp_path / "auto", citus_url)
    auto.write("tenant", "0001_customers.sql", CUSTOMERS)
    r = auto.cli("-v", "status")
    assert "tenant schemas are distributed (Citus " in r.output, r.output
    assert "2 worker(s); detected)" in r.output
    assert auto.cli("create", "acme").exit_code == 0
    assert _distributed(auto) == {"acme"}

    name = make_url(citus_url).database
    auto.query(f'ALTER DATABASE "{name}" SET citus.enable_schema_based_sharding TO on')
    plain = make_project(tmp_path / "plain", citus_url, "distributed = false\n")
    plain.write("tenant", "0001_customers.sql", CUSTOMERS)
    r = plain.cli("-v", "migrate")
    assert "tenant schemas are plain schemas (distributed = false)" in r.output, r.output
    assert plain.cli("create", "globex").exit_code == 0
    assert _distributed(plain) == {"acme"}
    assert plain.query("SELECT * FROM citus_shards WHERE table_name::text LIKE 'globex.%'") == []
    assert plain.cli("status").exit_code == 0

    bare = f"mtm_bare_{name}"[:63]
    with psycopg.connect(citus_cluster.coordinator.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{bare}"')
    try:
        url = citus_cluster.coordinator.url(bare)
        strict = make_project(tmp_path / "strict", url, "distributed = true\n")
        r = strict.cli("create", "initech")
        assert r.exit_code == 2
        assert r.output.strip().splitlines()[-1] == (
            "error: distributed = true, but this database has no citus extension: run "
            "CREATE EXTENSION citus on every node, or set distributed = false"
        )
        assert strict.schemas() == set()
    finally:
        with psycopg.connect(citus_cluster.coordinator.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{bare}" WITH (FORCE)')


def test_a_failure_on_a_worker_leaves_every_schema_at_a_clean_step(
    project: Project, citus_cluster: CitusCluster
) -> None:
    """A step whose change the worker refuses (a CHECK the tenant's rows break) rolls back
    on every node: the column added before it in the same migration is gone from the
    shard, the ledger and state rows did not move; the other tenants migrated. A
    no-transaction CREATE INDEX CONCURRENTLY runs on the worker too."""
    p = project
    p.write("tenant", "0001_customers.sql", CUSTOMERS)
    for t in ("acme", "globex"):
        assert p.cli("create", t).exit_code == 0
    p.query("INSERT INTO globex.customers (name) VALUES ('')")
    p.write(
        "tenant",
        "0002_named.sql",
        "ALTER TABLE customers ADD COLUMN nickname text;\n"
        "ALTER TABLE customers ADD CONSTRAINT named CHECK (name <> '');\n",
    )
    r = p.cli("migrate", "--continue-on-error")
    assert r.exit_code != 0
    assert "globex" in r.output and "named" in r.output
    ledger = "SELECT count(*) FROM {}.mtm_migrations"
    assert p.scalar(ledger.format("acme")) == 2 and p.scalar(ledger.format("globex")) == 1
    state = "SELECT applied FROM public.mtm_migrations_state WHERE schema_name = 'globex'"
    assert p.scalar(state) == 1
    nickname = (
        "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'globex' AND attname = 'nickname'"
    )
    assert _worker_query(citus_cluster, p.url, nickname) == [(0,), (0,)]
    assert p.scalar(nickname) == 0

    p.query("UPDATE globex.customers SET name = 'fixed'")
    p.write(
        "tenant",
        "0003_email_idx.sql",
        "-- mtm:no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_email_idx ON customers (email);\n",
    )
    r = p.cli("migrate")
    assert r.exit_code == 0, r.output
    valid = (
        "SELECT indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'globex' AND c.relname ~ '^customers_email_idx_[0-9]+$'"
    )
    assert _worker_query(citus_cluster, p.url, valid) == [(True,)]
    assert p.cli("validate").exit_code == 0


def test_advisory_locks_on_the_coordinator_serialise_runs(project: Project) -> None:
    """A second migrate waits for the tenant a first one holds (the schema's lock, taken
    on the coordinator), then finds the step done; a run lock held refuses a run."""
    p = project
    p.write("tenant", "0001_customers.sql", CUSTOMERS)
    assert p.cli("create", "acme").exit_code == 0
    p.write("tenant", "0002_more.sql", "ALTER TABLE customers ADD COLUMN more int;")
    from mtm.locks import SCHEMA_LOCK_CLASS

    with psycopg.connect(p.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('acme'))", (SCHEMA_LOCK_CLASS,))
        done: list[int] = []
        run = threading.Thread(target=lambda: done.append(p.run("migrate").returncode))
        run.start()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE 'waiting for schema acme%'"
        )
        seen = False
        with psycopg.connect(p.url, autocommit=True) as watcher:
            while run.is_alive() and not seen:
                seen = bool(watcher.execute(waiting).fetchone()[0])  # type: ignore[index]
                watcher.execute("SELECT pg_sleep(0.05)")
        assert seen, "the second run never waited for the schema's lock"
        assert p.scalar("SELECT count(*) FROM acme.mtm_migrations") == 1
        holder.execute("SELECT pg_advisory_unlock(%s, hashtext('acme'))", (SCHEMA_LOCK_CLASS,))
        run.join()
    assert done == [0]
    assert p.scalar("SELECT count(*) FROM acme.mtm_migrations") == 2


def test_a_single_server_fleet_is_distributed_one_tenant_at_a_time(
    project: Project, citus_cluster: CitusCluster
) -> None:
    """A fleet made with distributed = false becomes distributed schemas with mtm
    distribute: rows, ledger and state intact, idempotent; a tenant whose table references
    a plain public table is refused with Citus's reason, nothing changed for it."""
    p = project
    (p.root / "mtm.toml").write_text(
        f'database_url = "{p.url}"\ndistributed = false\n', encoding="utf-8"
    )
    p.write("public", "0001_plans.sql", "CREATE TABLE plans (id int PRIMARY KEY);")
    p.write("tenant", "0001_customers.sql", CUSTOMERS)
    for t in ("acme", "globex"):
        assert p.cli("create", t).exit_code == 0
        p.query(f"INSERT INTO {t}.customers (name) VALUES ('{t} customer')")
    assert _distributed(p) == set()

    r = p.cli("distribute", "--tenant", "acme")
    assert r.exit_code == 0, r.output
    assert "acme: distributed" in r.output
    assert _distributed(p) == {"acme"}
    r = p.cli("distribute", "--all")
    assert r.exit_code == 0, r.output
    assert "acme: already distributed" in r.output and "globex: distributed" in r.output
    assert "1 tenant distributed, 1 already distributed" in r.output
    assert _distributed(p) == {"acme", "globex"}
    for t in ("acme", "globex"):
        assert p.query(f"SELECT name FROM {t}.customers") == [(f"{t} customer",)]
        tables = {name for name, _ in _placed(p, t)}
        assert tables == {f"{t}.customers", f"{t}.orders", f"{t}.mtm_migrations"}
    assert p.cli("validate").exit_code == 0
    p.write("tenant", "0002_more.sql", "ALTER TABLE customers ADD COLUMN more int;")
    assert p.cli("migrate").exit_code == 0

    assert p.cli("create", "initech").exit_code == 0
    p.query("CREATE TABLE initech.plan_choice (plan_id int REFERENCES public.plans (id))")
    r = p.cli("distribute", "--all")
    assert r.exit_code == 1
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error: tenant 'initech' was not distributed: foreign keys from ")
    assert "reference tables" in last and "nothing changed for it" in last
    assert _distributed(p) == {"acme", "globex"}
    r = p.cli("distribute")
    assert r.exit_code == 2 and "--tenant SCHEMA (repeatable) or --all" in r.output
    r = p.cli("distribute", "--tenant", "nobody")
    assert r.exit_code == 2 and "no tenant 'nobody' is registered" in r.output
