"""The core: tenants, both migration layouts, migrate, status, down, history, new."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

import mtm
from conftest import Project
from mtm import MapperTable, tenant_connection
from mtm.config import sqlalchemy_url
from mtm.errors import MtmError, TenantError

CREATE_TABLE_A = """
import sqlalchemy as sa


def up(op):
    op.create_table(
        "test_table",
        sa.Column("id", sa.Integer),
        sa.Column("createdAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updatedAt", sa.DateTime(timezone=True), nullable=False),
    )


def down(op):
    op.drop_table("test_table")
"""


def columns(p: Project, schema: str, table: str) -> list[tuple[str, str, str]]:
    return [
        tuple(r)
        for r in p.query(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        )
    ]


def test_original_readme_scenario(project: Project) -> None:
    """The original tool's README, in its flat layout, then further than it could go."""
    (project.migrations / "public").rmdir()
    (project.migrations / "tenant").rmdir()
    project.write("", "tenant:1546110701000-create-table-A.py", CREATE_TABLE_A)
    project.write(
        "",
        "public:1546110703000-create-a-thing-C.sql",
        """
        CREATE TABLE a_thing (id serial PRIMARY KEY, label text);
        -- mtm:down
        DROP TABLE a_thing;
        """,
    )
    for schema, domain in (("tenant_a", "a.example.com"), ("tenant_b", "b.example.com")):
        r = project.cli("create", schema, "--domain", domain)
        assert r.exit_code == 0, r.output
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert columns(project, "tenant_a", "test_table") == [
        ("id", "integer", "YES"),
        ("createdAt", "timestamp with time zone", "NO"),
        ("updatedAt", "timestamp with time zone", "NO"),
    ]
    assert columns(project, "tenant_b", "test_table") == columns(project, "tenant_a", "test_table")
    assert project.scalar("SELECT to_regclass('public.a_thing') IS NOT NULL")
    assert project.scalar("SELECT to_regclass('tenant_a.a_thing')") is None

    r = project.cli("status")
    assert r.exit_code == 0
    assert "*PUBLIC" in r.output and "1/1" in r.output
    assert "tenant_a" in r.output and "a.example.com" in r.output
    assert "2 tenants: 2 at head" in r.output

    # a new migration is rolled out to every tenant
    project.write(
        "",
        "tenant:1546110801000-add-note.sql",
        """
        ALTER TABLE test_table ADD COLUMN note text;
        -- mtm:down
        ALTER TABLE test_table DROP COLUMN note;
        """,
    )
    r = project.cli("status", "--check")
    assert r.exit_code == 3  # pending work
    assert "2 behind" in r.output
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert "2 tenants migrated" in r.output
    assert ("note", "text", "YES") in columns(project, "tenant_b", "test_table")

    # one tenant taken down one step; status shows the difference
    r = project.cli("down", "--tenant", "tenant_b")
    assert r.exit_code == 0, r.output
    assert "tenant_b: reverted 1546110801000-add-note" in r.output
    assert ("note", "text", "YES") not in columns(project, "tenant_b", "test_table")
    status = mtm.status(project.config)
    by_schema = {t.schema: t for t in status.tenants}
    assert by_schema["tenant_a"].applied == 2 and not by_schema["tenant_a"].pending
    assert by_schema["tenant_b"].applied == 1
    assert by_schema["tenant_b"].pending == ["1546110801000-add-note"]
    r = project.cli("status", "--json")
    data = json.loads(r.output)
    assert data["summary"] == {"tenants": 2, "at_head": 1, "pending": True}

    # a failing migration leaves its tenant at a clean step
    project.write(
        "",
        "tenant:1546110901000-broken.sql",
        """
        ALTER TABLE test_table ADD COLUMN half_done int;
        SELECT no_such_function();
        """,
    )
    r = project.cli("migrate", "--tenant", "tenant_b")
    assert r.exit_code == 1
    assert "FAILED tenant_b: migration 1546110901000-broken" in r.output
    assert "no_such_function" in r.output
    # the step before it was applied; the broken one left nothing behind
    assert ("note", "text", "YES") in columns(project, "tenant_b", "test_table")
    assert all(c[0] != "half_done" for c in columns(project, "tenant_b", "test_table"))
    ledger = [r[0] for r in project.query("SELECT name FROM tenant_b.mtm_migrations ORDER BY 1")]
    assert ledger == ["1546110701000-create-table-A", "1546110801000-add-note"]


def test_python_migration_context_and_data(project: Project) -> None:
    project.write("tenant", "0001_t.sql", "CREATE TABLE t (who text);")
    project.write(
        "tenant",
        "0002_fill.py",
        """
        import sqlalchemy as sa

        def up(op, ctx):
            assert ctx.namespace == "tenant" and ctx.tenant == ctx.schema
            op.get_bind().execute(sa.text("INSERT INTO t VALUES (:w)"), {"w": ctx.schema})
        """,
    )
    mtm.create(project.config, "acme")
    assert project.query("SELECT who FROM acme.t") == [("acme",)]


def test_create_is_one_transaction(project: Project) -> None:
    project.write("tenant", "0001_ok.sql", "CREATE TABLE ok (id int);")
    project.write("tenant", "0002_bad.sql", "CREATE TABLE bad (id int REFERENCES nowhere(id));")
    r = project.cli("create", "acme", "--domain", "acme.example.com")
    assert r.exit_code == 1
    assert "tenant 'acme' was not created" in r.output
    assert "migration 0002_bad failed" in r.output
    assert "nowhere" in r.output
    assert "acme" not in project.schemas()
    assert project.scalar("SELECT count(*) FROM public.tenants") == 0
    assert project.scalar("SELECT count(*) FROM public.tenants_domains") == 0
    # fixed, the same create succeeds
    project.write("tenant", "0002_bad.sql", "CREATE TABLE bad (id int REFERENCES ok(id));")
    (project.migrations / "tenant" / "0001_ok.sql").write_text(
        "CREATE TABLE ok (id int PRIMARY KEY);"
    )
    r = project.cli("create", "acme", "--domain", "acme.example.com")
    assert r.exit_code == 0, r.output


def test_create_python_failure_names_the_migration(project: Project) -> None:
    project.write("tenant", "0001_ok.sql", "CREATE TABLE ok (id int);")
    project.write("tenant", "0002_raise.py", "def up(op):\n    raise RuntimeError('boom')\n")
    with pytest.raises(MtmError, match=r"migration 0002_raise failed: RuntimeError: boom"):
        mtm.create(project.config, "acme")
    assert "acme" not in project.schemas()


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ("public", "reserved by PostgreSQL"),
        ("pg_tenant", "starts with pg_"),
        ("information_schema", "reserved by PostgreSQL"),
        ("a" * 64, "64 bytes"),
        ("Acme", "not a plain lower-case identifier"),
        ("acme; DROP SCHEMA public", "not a plain lower-case identifier"),
        ("select", "SQL reserved word"),
        ("", "empty"),
    ],
)
def test_create_refuses_bad_names(project: Project, schema: str, fragment: str) -> None:
    r = project.cli("create", schema)
    assert r.exit_code == 2
    assert fragment in r.output
    assert r.output.count("\n") == 1
    assert project.schemas() == set()


def test_create_refuses_existing_schema_and_taken_domain(project: Project) -> None:
    project.write("tenant", "0001_t.sql", "CREATE TABLE t (id int);")
    assert project.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    r = project.cli("create", "acme")
    assert r.exit_code == 2 and "tenant 'acme' already exists" in r.output
    project.query("CREATE SCHEMA stray")
    r = project.cli("create", "stray")
    assert r.exit_code == 2 and "schema 'stray' already exists" in r.output
    r = project.cli("create", "globex", "--domain", "ACME.example.com.")
    assert r.exit_code == 2
    assert "domain 'acme.example.com' already belongs to tenant 'acme'" in r.output
    assert "globex" not in project.schemas()
    r = project.cli("create", "globex", "--domain", "bad_domain!")
    assert r.exit_code == 2 and "not a valid host name" in r.output


def test_tenants_list_and_drop(project: Project) -> None:
    mtm.create(
        project.config,
        "acme",
        domains=["acme.example.com", "www.acme.example.com"],
        name="Acme Corp",
    )
    mtm.create(project.config, "globex")
    r = project.cli("tenants", "--json")
    data = json.loads(r.output)
    assert [t["schema"] for t in data] == ["acme", "globex"]
    assert data[0]["domains"] == ["acme.example.com", "www.acme.example.com"]
    assert data[0]["name"] == "Acme Corp"
    r = project.cli("drop", "acme")
    assert r.exit_code == 2
    assert "refusing to drop tenant 'acme' without --yes" in r.output
    assert "acme" in project.schemas()
    r = project.cli("drop", "acme", "--yes")
    assert r.exit_code == 0, r.output
    assert "acme" not in project.schemas()
    assert [t.schema for t in mtm.tenants(project.config)] == ["globex"]
    assert project.scalar("SELECT count(*) FROM public.tenants_domains") == 0
    r = project.cli("drop", "nobody", "--yes")
    assert r.exit_code == 2 and "no tenant 'nobody'" in r.output


def test_mapper_lookup_and_tenant_connection(project: Project) -> None:
    project.write("tenant", "0001_t.sql", "CREATE TABLE t (v text);")
    mtm.create(project.config, "acme", domains=["acme.example.com"])
    mtm.create(project.config, "globex", domains=["globex.example.com"])
    engine = sa.create_engine(sqlalchemy_url(project.url))
    try:
        mapper = MapperTable(engine, project.config)
        tenant = mapper.lookup("Acme.Example.com:8443")
        assert tenant is not None and tenant.schema == "acme"
        assert mapper.lookup("globex.example.com.").schema == "globex"  # type: ignore[union-attr]
        assert mapper.lookup("nobody.example.com") is None
        assert mapper.lookup("") is None
        assert [t.schema for t in mapper.tenants()] == ["acme", "globex"]
        with tenant_connection(engine, "acme") as conn:
            conn.execute(sa.text("INSERT INTO t VALUES ('mine')"))
            conn.commit()
            assert conn.execute(sa.text("SELECT current_schema()")).scalar() == "acme"
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_schema()")).scalar() == "public"
        assert project.query("SELECT v FROM acme.t") == [("mine",)]
        assert project.query("SELECT v FROM globex.t") == []
    finally:
        engine.dispose()


def test_dry_run_and_tenant_filter(project: Project) -> None:
    mtm.create(project.config, "acme")
    mtm.create(project.config, "globex")
    project.write("tenant", "0001_t.sql", "CREATE TABLE t (id int);")
    r = project.cli("migrate", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "acme: would apply 0001_t" in r.output
    assert "nothing was changed" in r.output
    assert project.scalar("SELECT to_regclass('acme.t')") is None
    r = project.cli("migrate", "--tenant", "globex")
    assert r.exit_code == 0, r.output
    assert project.scalar("SELECT to_regclass('globex.t') IS NOT NULL")
    assert project.scalar("SELECT to_regclass('acme.t')") is None
    r = project.cli("migrate", "--tenant", "nobody")
    assert r.exit_code == 2 and "no tenant 'nobody' is registered" in r.output
    result = mtm.migrate(project.config)
    assert result.ok and result.steps == 1
    again = mtm.migrate(project.config)
    assert again.ok and again.steps == 0


def test_down_steps_to_public_and_refusals(project: Project) -> None:
    for i in range(1, 4):
        project.write(
            "tenant",
            f"000{i}_t{i}.sql",
            f"CREATE TABLE t{i} (id int);\n-- mtm:down\nDROP TABLE t{i};",
        )
    project.write(
        "tenant", "0004_py.py", "def up(op):\n    op.execute('CREATE TABLE t4 (id int)')\n"
    )
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);\n-- mtm:down\nDROP TABLE p;")
    mtm.create(project.config, "acme")
    mtm.migrate(project.config)
    # 0004 has no down: refuse before changing anything
    r = project.cli("down", "--tenant", "acme", "--steps", "2")
    assert r.exit_code == 2
    assert "acme: migration 0004_py has no down" in r.output
    assert project.scalar("SELECT count(*) FROM acme.mtm_migrations") == 4
    (project.migrations / "tenant" / "0004_py.py").write_text(
        "def up(op):\n    op.execute('CREATE TABLE t4 (id int)')\n\n\n"
        "def down(op):\n    op.drop_table('t4')\n"
    )
    # edited after applied: refuse too
    r = project.cli("down", "--tenant", "acme")
    assert r.exit_code == 2 and "was edited after it was applied" in r.output
    project.query(
        "UPDATE acme.mtm_migrations SET checksum = %s WHERE name = '0004_py'",
        (mtm.commands.discover(project.migrations).tenant[3].checksum,),
    )
    r = project.cli("down", "--tenant", "acme", "--to", "0001_t1")
    assert r.exit_code == 0, r.output
    assert "reverted 0004_py, 0003_t3, 0002_t2" in r.output
    assert [r[0] for r in project.query("SELECT name FROM acme.mtm_migrations")] == ["0001_t1"]
    assert project.scalar("SELECT to_regclass('acme.t2')") is None
    r = project.cli("down", "--public")
    assert r.exit_code == 0 and "*PUBLIC: reverted 0001_p" in r.output
    assert project.scalar("SELECT to_regclass('public.p')") is None
    r = project.cli("down")
    assert r.exit_code == 2 and "choose exactly one" in r.output
    r = project.cli("down", "--tenant", "acme", "--to", "0003_t3")
    assert r.exit_code == 2 and "0003_t3 is not applied" in r.output
    # status after down: pending again, and migrate brings it back
    assert mtm.status(project.config).tenants[0].pending == ["0002_t2", "0003_t3", "0004_py"]
    assert mtm.migrate(project.config).steps == 4


def test_history(project: Project) -> None:
    project.write("tenant", "0001_a.sql", "CREATE TABLE a (id int);")
    project.write("tenant", "0002_b.sql", "CREATE TABLE b (id int);")
    mtm.create(project.config, "acme")
    rows = mtm.history(project.config, tenant="acme")
    assert [r.name for r in rows] == ["0001_a", "0002_b"]
    assert all(len(r.checksum) == 64 and r.duration_ms is not None for r in rows)
    r = project.cli("history", "--tenant", "acme")
    assert r.exit_code == 0 and "0002_b" in r.output
    r = project.cli("history", "--tenant", "nobody")
    assert r.exit_code == 2 and "no tenant 'nobody'" in r.output
    assert project.cli("history", "--public").exit_code == 0


def test_new_in_both_layouts(project: Project) -> None:
    r = project.cli("new", "tenant", "Add customers table!")
    assert r.exit_code == 0, r.output
    path = Path(r.output.strip())
    assert path.parent == project.migrations / "tenant"
    assert path.name.endswith("_add_customers_table.py")
    assert "def up(op)" in path.read_text() and "def down(op)" in path.read_text()
    r = project.cli("new", "public", "plans", "--sql")
    path = Path(r.output.strip())
    assert path.suffix == ".sql" and "-- mtm:down" in path.read_text()
    # an SQL file left empty is refused, by name
    with pytest.raises(MtmError, match="the up script is empty"):
        mtm.commands.discover(project.migrations)
    path.write_text("CREATE TABLE plans (id int);\n" + path.read_text())
    # the generated files are valid migrations
    mset = mtm.commands.discover(project.migrations)
    assert len(mset.tenant) == 1 and len(mset.public) == 1
    # flat layout when the folder uses it
    flat = project.root / "flat"
    flat.mkdir()
    (flat / "tenant:1546110701000-a.sql").write_text("SELECT 1;")
    (project.root / "mtm.toml").write_text(
        f'database_url = "{project.url}"\nmigrations_directory = "flat"\n'
    )
    r = project.cli("new", "tenant", "second one")
    path = Path(r.output.strip())
    assert path.parent == flat and path.name.startswith("tenant:")
    assert path.name.endswith("-second-one.py")


def test_api_errors_are_mtm_errors(project: Project) -> None:
    with pytest.raises(TenantError):
        mtm.status(project.config, tenants=["nobody"])
    with pytest.raises(MtmError, match="choose one of"):
        mtm.history(project.config)


def test_create_whose_first_migration_runs_outside_a_transaction(project: Project) -> None:
    """The tenant is committed before such a migration runs; a failure there says so."""
    project.write(
        "tenant",
        "0001_concurrently.sql",
        "-- mtm:no-transaction\nCREATE INDEX CONCURRENTLY nope_idx ON missing_table (id);",
    )
    r = project.cli("create", "acme")
    assert r.exit_code == 1
    assert "tenant 'acme' was created, but migration 0001_concurrently failed" in r.output
    assert "missing_table" in r.output
    assert "acme" in project.schemas()
    assert [t.schema for t in mtm.tenants(project.config)] == ["acme"]


def test_a_foreign_table_named_like_the_registry_is_refused(project: Project) -> None:
    """The original tool's mapper table has another shape: say so, change nothing."""
    project.query(
        "CREATE TABLE public.tenants (id serial PRIMARY KEY, domain text, schema text, name text, "
        '"createdAt" timestamptz, "updatedAt" timestamptz)'
    )
    for args in (("create", "acme"), ("migrate",), ("status",), ("tenants",)):
        r = project.cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert (
            'table "public"."tenants" (not mtm\'s tenant registry) was made by another tool'
            in r.output
        )
        assert "point tenant_table in the config at names no other tool uses" in r.output
    assert project.schemas() == set()
    assert project.scalar("SELECT to_regclass('public.mtm_migrations')") is None
