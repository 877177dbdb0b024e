"""Every command beyond create and migrate, on a Citus cluster, on distributed tenants.

One database for the module (three nodes cost seconds each), several tenants per test,
each made with mtm and then distributed (``citus_schema_distribute``) so that its
tables live on a worker. Each test says what its command does there: works (and what
shows it), or is refused before anything changes. ``COMMANDS`` is the table of
docs/citus.md, *Every command on a cluster*; the last test keeps the two equal.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from _citus import CitusCluster
from conftest import ROOT, Project, make_project
from test_adopt import (
    CONFIG,
    JS_A,
    JS_B,
    JS_P,
    LEGACY_PUBLIC,
    LEGACY_TENANT,
    PUBLIC_1,
    TENANT_A,
    TENANT_B,
)
from test_adopt import run as run_adopt

pytestmark = pytest.mark.citus

# command (as docs/citus.md names it) -> its verdict on a cluster, each proved below
COMMANDS = {
    "adopt": "works",
    "rename": "works",
    "clone": "works",
    "export": "works",
    "import": "works",
    "diff": "works",
    "lint": "works",
    "sql": "works",
    "role add": "refuses",
    "role add --login / rotate / remove": "works",
    "repair": "works",
    "stamp": "works",
    "domains": "works",
    "create --existing": "works",
    "new --autogenerate": "works",
}

# A public table tenants reference must be a reference table on a cluster.
COUNTRIES = """
CREATE TABLE countries (code text PRIMARY KEY);
SELECT create_reference_table('countries');
INSERT INTO countries VALUES ('fr'), ('jp');
-- mtm:down
DROP TABLE countries;
"""
CUSTOMERS = """
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE);
CREATE TABLE orders (id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id), total numeric);
CREATE INDEX orders_customer ON orders (customer_id);
-- mtm:down
DROP TABLE orders;
DROP TABLE customers;
"""
PHONE = """
ALTER TABLE customers ADD COLUMN phone text;
-- mtm:down
ALTER TABLE customers DROP COLUMN phone;
"""


@pytest.fixture(scope="module")
def cluster_db(citus_cluster: CitusCluster) -> Iterator[str]:
    """One database on the cluster for the whole module."""
    url = citus_cluster.create_database()
    try:
        yield url
    finally:
        citus_cluster.drop_database(make_url(url).database or "")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, cluster_db: str) -> Project:
    project = make_project(tmp_path_factory.mktemp("citus") / "app", cluster_db)
    project.write("public", "0001_countries.sql", COUNTRIES)
    project.write("tenant", "0001_customers.sql", CUSTOMERS)
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    return project


def tenant(project: Project, prefix: str, *args: str, rows: int = 1) -> str:
    """A new tenant, created by mtm then distributed, with ``rows`` customers."""
    name = f"{prefix}_{uuid.uuid4().hex[:6]}"
    r = project.cli("create", name, *args)
    assert r.exit_code == 0, r.output
    distribute(project, name)
    for i in range(rows):
        project.query(
            f"INSERT INTO {name}.customers (name, email) VALUES (%s, %s)", (f"c{i}", f"{i}@x")
        )
    return name


def distribute(project: Project, schema: str) -> None:
    with psycopg.connect(project.url, autocommit=True) as conn:
        conn.execute("SET client_min_messages TO warning")
        conn.execute("SELECT citus_schema_distribute(%s)", (schema,))


def distributed(project: Project) -> set[str]:
    return {r[0] for r in project.query("SELECT schema_name::text FROM citus_schemas")}


def on_workers(project: Project, sql: str, params: object = None) -> dict[int, object]:
    """``sql``'s first row on each worker (by port), in the same database."""
    db = make_url(project.url).database
    ports = project.query("SELECT nodeport FROM pg_dist_node WHERE groupid > 0 ORDER BY 1")
    out = {}
    for (port,) in ports:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/{db}") as conn:
            out[port] = conn.execute(sql, params).fetchone()
    return out


def customers(project: Project, schema: str) -> list[str]:
    return [r[0] for r in project.query(f"SELECT name FROM {schema}.customers ORDER BY id")]


def test_rename_works_the_schema_moves_on_its_worker(project: Project) -> None:
    name = tenant(project, "ren", "--role")
    new = name + "_x"
    r = project.cli("rename", name, new)
    assert r.exit_code == 0, r.output
    assert new in distributed(project) and name not in distributed(project)
    assert customers(project, new) == ["c0"]
    node = project.scalar(
        "SELECT nodeport FROM citus_shards WHERE table_name = %s::regclass", (f"{new}.customers",)
    )
    schemas = on_workers(project, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (new,))
    assert schemas[node] == (1,)
    old = on_workers(project, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,))
    assert set(old.values()) == {(0,)}
    role = on_workers(
        project, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (f"mtm_tenant_{new}",)
    )
    assert set(role.values()) == {(1,)}


def test_clone_works_with_the_rows_of_a_distributed_source(project: Project) -> None:
    source = tenant(project, "cls", rows=2)
    target = source + "_c"
    r = project.cli("clone", source, target, "--data")
    assert r.exit_code == 0, r.output
    assert customers(project, target) == ["c0", "c1"]
    # made the way create makes a tenant: here on the coordinator, distributed on demand
    distribute(project, target)
    assert target in distributed(project)
    project.query(f"INSERT INTO {target}.customers (name, email) VALUES ('c2', '2@x')")
    assert customers(project, target) == ["c0", "c1", "c2"]


def test_export_and_import_work_pg_dump_reads_the_rows_on_the_worker(
    project: Project, tmp_path: Path
) -> None:
    """The dump adds the foreign key to the reference table by ALTER TABLE, which Citus
    refuses among other statements in one query: the import sends one at a time."""
    name = tenant(project, "exp", rows=0)
    project.query(
        f"ALTER TABLE {name}.customers ADD COLUMN country text REFERENCES public.countries (code)"
    )
    project.query(
        f"INSERT INTO {name}.customers (name, email, country) VALUES ('before', 'b@x', 'fr')"
    )
    file = tmp_path / "t.tenant"
    r = project.cli("export", name, str(file))
    assert r.exit_code == 0, r.output
    copy = name + "_i"
    r = project.cli("import", str(file), "--as", copy)
    assert r.exit_code == 0, r.output
    assert customers(project, copy) == ["before"]
    assert project.scalar(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
        (f"{copy}.customers",),
    )
    r = project.cli("validate")
    assert r.exit_code == 0, r.output


def test_diff_works_references_stay_local_and_drift_on_a_worker_is_seen(
    project: Project,
) -> None:
    a, b = tenant(project, "dfa"), tenant(project, "dfb")
    db = make_url(project.url).database
    groups = "SELECT last_value FROM pg_catalog.pg_dist_colocationid_seq"
    before = project.scalar(groups)  # a distributed schema made would take the next one
    # Every new schema distributed by default: the references must still be local.
    project.query(f'ALTER DATABASE "{db}" SET citus.enable_schema_based_sharding TO on')
    try:
        project.query(f"DROP INDEX {b}.orders_customer")
        r = project.cli("diff", "--json", "--tenant", a, "--tenant", b)
    finally:
        project.query(f'ALTER DATABASE "{db}" RESET citus.enable_schema_based_sharding')
    assert r.exit_code == 1, r.output
    report = json.loads(r.output)
    drifted = [g for g in report["groups"] if g["differences"]]
    assert [g["tenants"] for g in drifted] == [[b]]
    assert "orders_customer" in json.dumps(drifted)
    assert not project.query("SELECT 1 FROM pg_namespace WHERE nspname LIKE 'mtm\\_reference%'")
    assert project.scalar(groups) == before
    assert distributed(project) >= {a, b}


def test_lint_works(project: Project) -> None:
    tenant(project, "lnt")
    project.write("tenant", "0002_phone.sql", PHONE)
    try:
        r = project.cli("lint", "--pending")
    finally:
        (project.migrations / "tenant" / "0002_phone.sql").unlink()
    assert r.exit_code == 0, r.output
    assert "0 findings in 1 migration checked" in r.output


def test_sql_works(project: Project) -> None:
    name = tenant(project, "sql")
    project.write("tenant", "0002_phone.sql", PHONE)
    try:
        r = project.cli("sql", "--tenant", name, "--pending")
    finally:
        (project.migrations / "tenant" / "0002_phone.sql").unlink()
    assert r.exit_code == 0, r.output
    assert f'SET LOCAL search_path TO "{name}"' in r.output
    assert "ALTER TABLE customers ADD COLUMN phone text" in r.output


def test_roles_work_with_login_grants_reach_the_worker_and_remove_and_drop_do_not_crash(
    project: Project,
) -> None:
    name = tenant(project, "rol")
    role = f"mtm_tenant_{name}"
    # Citus reaches the worker as the role itself: one without LOGIN is refused there
    r = project.cli("role", "add", name)
    assert r.exit_code == 2, r.output
    assert r.output == (
        f"error: {name} is a distributed schema: Citus reaches its worker as role {role}, "
        "and a role without LOGIN cannot get there; run 'mtm role add "
        f"{name} --login' (and let the coordinator authenticate as it on the workers: "
        "pg_dist_authinfo or a .pgpass on the coordinator)\n"
    )
    assert not project.query("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    r = project.cli("role", "add", name, "--login")
    assert r.exit_code == 0, r.output
    project.query(f"CREATE TABLE {name}.later (id int PRIMARY KEY)")  # default privileges
    with psycopg.connect(project.url, autocommit=True) as conn:
        conn.execute(f'SET ROLE "{role}"')
        conn.execute(f"INSERT INTO {name}.later VALUES (1)")
        assert conn.execute(f"SELECT count(*) FROM {name}.customers").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT * FROM {name}.mtm_migrations")
    r = project.cli("role", "rotate", name)
    assert r.exit_code == 0, r.output
    secret = "SELECT md5(rolpassword) FROM pg_authid WHERE rolname = %s"
    assert set(on_workers(project, secret, (role,)).values()) == {
        (project.scalar(secret, (role,)),)
    }  # the new password reaches every worker, where the coordinator logs in as the role
    # REASSIGN OWNED ... TO CURRENT_USER crashed the coordinator's backend (Citus 13.2)
    r = project.cli("role", "remove", name)
    assert r.exit_code == 0, r.output
    gone = on_workers(project, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,))
    assert set(gone.values()) == {(0,)}
    other = tenant(project, "rold", "--role")
    r = project.cli("drop", other, "--yes")
    assert r.exit_code == 0, r.output
    assert not project.query("SELECT 1 FROM pg_roles WHERE rolname = %s", (f"mtm_tenant_{other}",))


def test_repair_works(project: Project) -> None:
    name = tenant(project, "rep")
    path = project.migrations / "tenant" / "0001_customers.sql"
    before = path.read_text(encoding="utf-8")
    recorded = f"SELECT checksum FROM {name}.mtm_migrations"
    old = project.scalar(recorded)
    path.write_text(before + "-- reviewed\n", encoding="utf-8")
    try:
        r = project.cli("repair", "0001_customers", "--tenant", name)
        assert r.exit_code == 0, r.output
        assert project.scalar(recorded) not in (None, old)
        assert project.scalar(
            "SELECT count(*) FROM public.mtm_migrations_repairs WHERE schema_name = %s", (name,)
        )
    finally:
        path.write_text(before, encoding="utf-8")
        r = project.cli("repair", "0001_customers", "--tenant", name)
    assert r.exit_code == 0, r.output
    assert project.scalar(recorded) == old


def test_stamp_works(project: Project) -> None:
    name = tenant(project, "stp")
    r = project.cli("stamp", "0001_customers", "--delete", "--tenant", name)
    assert r.exit_code == 0, r.output
    assert project.scalar(f"SELECT count(*) FROM {name}.mtm_migrations") == 0
    r = project.cli("stamp", "head", "--tenant", name)
    assert r.exit_code == 0, r.output
    assert project.scalar(f"SELECT count(*) FROM {name}.mtm_migrations") == 1
    r = project.cli("status", "--json")
    rows = {row["schema"]: row for row in json.loads(r.output)["tenants"]}
    assert rows[name]["pending"] == []


def test_domains_work(project: Project) -> None:
    name = tenant(project, "dom")
    first, second = (f"{name.replace('_', '-')}.example.{tld}" for tld in ("com", "org"))
    r = project.cli("domains", "add", name, first)
    assert r.exit_code == 0, r.output
    r = project.cli("domains", "add", name, second, "--primary")
    assert r.exit_code == 0, r.output
    r = project.cli("domains", "remove", name, first)
    assert r.exit_code == 0, r.output
    r = project.cli("domains", "list", name, "--json")
    assert second in r.output and first not in r.output


def test_create_existing_works_the_ledger_is_distributed_with_the_schema(
    project: Project,
) -> None:
    name = f"exi_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(project.url, autocommit=True) as conn:
        conn.execute("SET citus.enable_schema_based_sharding TO on")
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"SET search_path TO {name}")
        for statement in CUSTOMERS.split("-- mtm:down")[0].split(";"):
            if statement.strip():
                conn.execute(statement)
    r = project.cli("create", name, "--existing", "--baseline", "0001_customers")
    assert r.exit_code == 0, r.output
    assert project.scalar(
        "SELECT count(*) FROM citus_shards WHERE table_name = %s::regclass",
        (f"{name}.mtm_migrations",),
    )
    r = project.cli("validate")
    assert r.exit_code == 0, r.output


def test_adopt_works_on_distributed_legacy_tenants(tmp_path: Path, citus_url: str) -> None:
    legacy = make_project(tmp_path / "legacy", citus_url)
    (legacy.root / "mtm.toml").unlink()
    for folder in ("public", "tenant"):
        (legacy.migrations / folder).rmdir()
    (legacy.root / CONFIG).write_text(
        json.dumps(
            {
                "tenantMapperTableName": "tenants",
                "migrationsTableName": "migrations",
                "migrationsDirectory": "migrations",
            }
        ),
        encoding="utf-8",
    )
    legacy.write("", TENANT_A, JS_A)
    legacy.write("", TENANT_B, JS_B)
    legacy.write("", PUBLIC_1, JS_P)
    legacy.query(LEGACY_PUBLIC)
    # a tenant's FK to public.plans needs plans to be a reference table on a cluster
    legacy.query("SELECT create_reference_table('public.plans')")
    for schema in ("alpha", "beta"):
        # one statement at a time: Citus refuses several in one query string here
        for statement in LEGACY_TENANT.format(s=schema).split(";"):
            if statement.strip():
                legacy.query(statement)
        distribute(legacy, schema)
    r = run_adopt(legacy, "adopt")
    assert r.exit_code == 0, r.output
    assert "adopted 2 tenant schemas and public" in r.output
    assert distributed(legacy) == {"alpha", "beta"}
    r = run_adopt(legacy, "status", "--json")
    assert r.exit_code == 0, r.output
    assert {row["schema"] for row in json.loads(r.output)["tenants"]} == {"alpha", "beta"}
    r = run_adopt(legacy, "diff")
    assert r.exit_code == 0, r.output


MODELS = """
import sqlalchemy as sa

metadata = sa.MetaData()
countries = sa.Table("countries", metadata, sa.Column("code", sa.Text, primary_key=True),
                     schema="public")
customers = sa.Table("customers", metadata,
                     sa.Column("id", sa.BigInteger, primary_key=True),
                     sa.Column("name", sa.Text, nullable=False),
                     sa.Column("email", sa.Text, nullable=False, unique=True),
                     sa.Column("vip", sa.Boolean))
"""


def test_new_autogenerate_works_its_throwaway_database_has_citus(
    project: Project, tmp_path: Path
) -> None:
    """The public migration calls create_reference_table: the throwaway database the
    migrations are built in needs the extension as the real one has it."""
    auto = make_project(tmp_path / "auto", project.url)
    auto.write("public", "0001_countries.sql", COUNTRIES)
    auto.write("tenant", "0001_customers.sql", CUSTOMERS)
    models = f"models_{uuid.uuid4().hex[:10]}"
    (auto.root / f"{models}.py").write_text(MODELS, encoding="utf-8")
    (auto.root / "mtm.toml").write_text(
        f'database_url = "{auto.url}"\nmodels = ["{models}:metadata"]\n', encoding="utf-8"
    )
    r = auto.cli("new", "tenant", "add vip", "--autogenerate")
    assert r.exit_code == 0, r.output
    [written] = (auto.migrations / "tenant").glob("*_add_vip.py")
    assert "op.add_column('customers', sa.Column('vip'" in written.read_text(encoding="utf-8")
    assert not auto.query("SELECT 1 FROM pg_database WHERE datname LIKE 'mtm\\_autogen\\_%'")


def test_the_docs_table_says_what_these_tests_prove() -> None:
    text = (ROOT / "docs" / "citus.md").read_text(encoding="utf-8")
    section = text.split("## Every command on a cluster", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `mtm ([^`]+)` \| (\w+)", section, re.M)
    assert dict(rows) == COMMANDS
