"""mtm new (public|tenant) MSG --autogenerate: migrations written from SQLAlchemy models.

The test project (``autogen_models``: 15 tables, public and tenant, foreign keys both
ways, enums, indexes with an expression index, named CHECKs, server defaults) goes
from nothing to head with generated migrations only, back down to empty schemas, and
then through six changes to the models, each of which must be in the next generated
migration. The throwaway database is gone after success and after a failure.
"""

from __future__ import annotations

import logging
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from _reliability import spawn, wait_until
from autogen_models import CHANGES, MODELS_V1, models_v2
from conftest import Project
from mtm import autogenerate, catalog
from mtm.commands.autogenerate import new_from_models
from mtm.errors import ConfigError, MtmError, UsageError
from mtm.exits import Exit

LEDGER = "mtm_migrations"


def use_models(project: Project, source: str) -> str:
    """Write ``source`` as a module of a new name in the project and point the config at
    it; the module's name."""
    name = f"models_{uuid.uuid4().hex[:10]}"
    (project.root / f"{name}.py").write_text(source, encoding="utf-8")
    (project.root / "mtm.toml").write_text(
        f'database_url = "{project.url}"\nmodels = ["{name}:metadata"]\n', encoding="utf-8"
    )
    return name


def earlier(minutes: int) -> datetime:
    """A moment for a migration's name, so that one the command line writes next (named
    with the real time) sorts after it."""
    return datetime.now(UTC) - timedelta(minutes=minutes)


def tables_of(source: str) -> list[sa.Table]:
    namespace: dict[str, object] = {}
    exec(compile(source, "models", "exec"), namespace)
    metadata = namespace["metadata"]
    assert isinstance(metadata, sa.MetaData)
    return list(metadata.sorted_tables)


def build_from_models(project: Project, schema: str, source: str) -> None:
    """The tenant tables built by SQLAlchemy's create_all in ``schema`` (search_path).

    create_all makes every enum type of the MetaData; those of public tables go."""
    engine = sa.create_engine(sa.make_url(project.url).set(drivername="postgresql+psycopg"))
    tables = tables_of(source)
    tenant = [t for t in tables if t.schema is None]
    public_enums = {
        c.type.name for t in tables if t.schema for c in t.columns if isinstance(c.type, sa.Enum)
    }
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            conn.exec_driver_sql(f"SET LOCAL search_path TO {schema}")
            tenant[0].metadata.create_all(conn, tables=tenant)
            for name in public_enums:
                conn.exec_driver_sql(f"DROP TYPE {schema}.{name}")
    finally:
        engine.dispose()


def differences(project: Project, a: str, b: str) -> list[str]:
    engine = sa.create_engine(sa.make_url(project.url).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            left = catalog.describe(conn, a, exclude=[LEDGER])
            right = catalog.describe(conn, b, exclude=[LEDGER])
            return [str(d) for d in catalog.compare(left, right)]
    finally:
        engine.dispose()


def objects_in(project: Project, schema: str) -> dict[str, list[str]]:
    """Tables and types in ``schema``: what a down to zero must leave empty."""
    tables = project.query(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE nspname = %s AND relkind IN ('r', 'p', 'i', 'S') ORDER BY 1",
        (schema,),
    )
    types = project.query(
        "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE nspname = %s AND typtype = 'e' ORDER BY 1",
        (schema,),
    )
    return {"tables": [r[0] for r in tables], "enums": [r[0] for r in types]}


def test_models_to_head_back_to_empty_and_each_change_in_the_next_migration(
    project: Project,
) -> None:
    """Longer than most: the whole life of a project's models, in the order it happens."""
    use_models(project, MODELS_V1)

    # From nothing: the public migration from the command line, the tenant one from Python.
    r = project.cli("new", "public", "initial public", "--autogenerate")
    assert r.exit_code == 0, r.output
    public_file = Path(r.output.strip())
    assert public_file.parent == project.migrations / "public"
    generated = new_from_models(project.config, "tenant", "initial tenant", now=earlier(1))
    assert generated.path is not None and generated.warnings == []
    tenant_file = generated.path
    files = sorted(p.name for p in project.migrations.rglob("*.py"))
    assert files == sorted([public_file.name, tenant_file.name])  # generated ones only
    for f in (public_file, tenant_file):
        assert "mtm_autogen" not in f.read_text()
    assert "schema='public'" in public_file.read_text()
    for own in ("'tenants'", "'tenants_domains'", "'mtm_migrations"):  # mtm's tables: not models
        assert own not in public_file.read_text() and own not in tenant_file.read_text()
    tenant_text = tenant_file.read_text()
    assert "['public.plans.id']" in tenant_text  # references to public stay qualified
    assert "lower(email)" in tenant_text  # the expression index
    assert "schema=" not in tenant_text  # and no tenant schema is named

    # Applied by mtm migrate and create: the tenant is what create_all builds.
    assert project.cli("migrate").exit_code == 0
    assert project.cli("create", "acme").exit_code == 0
    build_from_models(project, "from_models", MODELS_V1)
    assert differences(project, "acme", "from_models") == []
    for ns in ("public", "tenant"):  # and nothing is left to generate
        again = new_from_models(project.config, ns, "again", now=earlier(0))
        assert (again.path, again.warnings) == (None, [])
    r = project.cli("new", "tenant", "again", "--autogenerate")
    assert r.exit_code == 0 and r.output.startswith("nothing to change"), r.output

    # Back down to zero: empty schemas (the ledger aside), no enum left behind.
    project.query("DROP SCHEMA from_models CASCADE")  # it refers to public.plans
    assert project.cli("down", "--all-tenants").exit_code == 0
    assert objects_in(project, "acme") == {
        "tables": [LEDGER, f"{LEDGER}_pkey"],
        "enums": [],
    }
    assert project.cli("down", "--public").exit_code == 0
    public = objects_in(project, "public")
    assert not {"plans", "features", "plan_features", "countries"} & set(public["tables"])
    assert public["enums"] == []

    # Up again, then the six changes: each one in the next migration.
    assert project.cli("migrate").exit_code == 0
    use_models(project, models_v2())
    r = project.run("new", "tenant", "six changes", "--autogenerate", timeout=300)
    assert r.returncode == 0, r.stderr
    changed = Path(r.stdout.strip()).read_text()
    expected = {
        "new table": "op.create_table('labels'",
        "new column": "op.add_column('users', sa.Column('nickname', sa.Text()",
        "dropped index": "op.drop_index(op.f('ix_tasks_project_status'), table_name='tasks')",
        "changed server default": "server_default='USD'",
        "changed check": (
            "op.create_check_constraint('ck_tasks_priority', 'tasks', 'priority BETWEEN 1 AND 10')"
        ),
        "new enum value": "ADD VALUE \\'blocked\\' BEFORE \\'done\\'",
    }
    assert set(expected) == set(CHANGES)
    up = changed.split("def down(op):")[0]
    for change, text in expected.items():
        assert text in up, f"{change}: not in the migration"
    assert "warning: enum task_status gains blocked" in r.stderr  # the same-transaction rule
    assert new_from_models(project.config, "public", "none", now=earlier(0)).path is None

    assert project.cli("migrate").exit_code == 0
    build_from_models(project, "from_models_v2", models_v2())
    assert differences(project, "acme", "from_models_v2") == []
    assert new_from_models(project.config, "tenant", "none", now=earlier(0)).path is None
    project.query("INSERT INTO acme.teams (id, name) VALUES (1, 't')")
    project.query("INSERT INTO acme.projects (id, team_id, name) VALUES (1, 1, 'p')")
    project.query("INSERT INTO acme.tasks (project_id, title, priority) VALUES (1, 'x', 9)")
    project.query("DELETE FROM acme.tasks")  # the old CHECK (1..5) comes back in down

    # Its down reverts all six, the enum value included (the type is rebuilt).
    assert project.cli("down", "--all-tenants").exit_code == 0
    build_from_models(project, "from_models", MODELS_V1)
    assert differences(project, "acme", "from_models") == []


def created_databases(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.database  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "event", None) == "throwaway.create"
    ]


def database_exists(project: Project, name: str) -> bool:
    return bool(project.scalar("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)))


def test_the_throwaway_database_is_dropped_after_success(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mtm")
    use_models(project, MODELS_V1)
    result = new_from_models(project.config, "public", "initial")
    assert result.path is not None
    [name] = created_databases(caplog)
    assert name.startswith("mtm_autogen_")
    assert not database_exists(project, name)
    assert [r.database for r in caplog.records if getattr(r, "event", "") == "throwaway.drop"] == [  # type: ignore[attr-defined]
        name
    ]


def test_a_failing_migration_names_itself_and_the_throwaway_database_is_dropped(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mtm")
    use_models(project, MODELS_V1)
    project.write("tenant", "0001_broken.sql", "CREATE TABLE t (id int REFERENCES nowhere);")
    with pytest.raises(MtmError) as raised:
        new_from_models(project.config, "tenant", "initial")
    message = raised.value.message
    assert message.startswith("the migrations could not be applied in a throwaway database")
    assert "0001_broken" in message and "nowhere" in message
    [name] = created_databases(caplog)
    assert not database_exists(project, name)
    assert sorted(p.name for p in project.migrations.rglob("*.py")) == []  # nothing written
    r = project.cli("new", "tenant", "initial", "--autogenerate")
    assert r.exit_code == 1
    # The failed step's ERROR record (the CLI shows those by default), then the error.
    last = r.output.splitlines()[-1]
    assert last.startswith("error: the migrations could not be applied in a throwaway database")
    assert "Traceback" not in r.output


def test_the_throwaway_database_is_dropped_after_an_interrupt(
    project: Project, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="mtm")
    use_models(project, MODELS_V1)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(autogenerate, "compare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new_from_models(project.config, "public", "initial")
    [name] = created_databases(caplog)
    assert not database_exists(project, name)
    assert list(project.migrations.rglob("*.py")) == []


BAD_SCHEMA = """
import sqlalchemy as sa
metadata = sa.MetaData()
sa.Table("invoices", metadata, sa.Column("id", sa.Integer, primary_key=True), schema="billing")
"""

PUBLIC_TO_TENANT = """
import sqlalchemy as sa
metadata = sa.MetaData()
sa.Table("users", metadata, sa.Column("id", sa.Integer, primary_key=True))
sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("owner", sa.ForeignKey("users.id")),
    schema="public",
)
"""

DECLARATIVE = """
from sqlalchemy.orm import DeclarativeBase
class Base(DeclarativeBase):
    pass
metadata = Base
"""


@pytest.mark.parametrize(
    ("source", "spec", "exit_code", "message"),
    [
        (None, None, 2, "error: no models configured: set models = "),
        (None, "no_such_module_here:metadata", 2, "error: models entry "),
        (BAD_SCHEMA, None, 2, "error: model table billing.invoices ("),
        (PUBLIC_TO_TENANT, None, 2, "error: public table plans has a foreign key to users.id"),
        (DECLARATIVE, None, 2, "is not a SQLAlchemy MetaData (add .metadata)"),
        (None, "just_a_module", 2, "is not module:attribute"),
    ],
)
def test_bad_models_are_one_line_and_change_nothing(
    project: Project, source: str | None, spec: str | None, exit_code: int, message: str
) -> None:
    if source is not None:
        use_models(project, source)
    if spec is not None:
        (project.root / "mtm.toml").write_text(
            f'database_url = "{project.url}"\nmodels = "{spec}"\n', encoding="utf-8"
        )
    before = project.scalar("SELECT count(*) FROM pg_database")
    r = project.cli("new", "tenant", "x", "--autogenerate")
    assert r.exit_code == exit_code
    assert message in r.output and r.output.count("\n") == 1 and "Traceback" not in r.output
    assert list(project.migrations.rglob("*.py")) == []
    assert project.scalar("SELECT count(*) FROM pg_database") == before


def test_autogenerate_with_sql_is_refused(project: Project) -> None:
    use_models(project, MODELS_V1)
    r = project.cli("new", "tenant", "x", "--autogenerate", "--sql")
    assert r.exit_code == 2
    assert r.output == "error: --autogenerate writes a Python migration: leave out --sql\n"


def test_python_api_refuses_a_bad_namespace_and_message_before_building(project: Project) -> None:
    use_models(project, MODELS_V1)
    with pytest.raises(UsageError, match="namespace must be public or tenant"):
        new_from_models(project.config, "tenants", "x")
    with pytest.raises(UsageError, match="letters or digits"):
        new_from_models(project.config, "tenant", "!!!")
    with pytest.raises(ConfigError, match="no models configured"):
        (project.root / "mtm.toml").write_text(f'database_url = "{project.url}"\n')
        new_from_models(project.config, "tenant", "x")


UNDETECTABLE_V1 = """
import sqlalchemy as sa
metadata = sa.MetaData()
mood = sa.Enum("sad", "ok", "happy", name="mood")
sa.Table(
    "notes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("title", sa.Text),
    sa.Column("mood", mood),
)
"""

UNDETECTABLE_V2 = """
import sqlalchemy as sa
metadata = sa.MetaData()
mood = sa.Enum("happy", "ok", name="mood")
sa.Table(
    "notes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("heading", sa.Text),
    sa.Column("mood", mood),
    sa.CheckConstraint("id > 0"),
)
"""


def test_what_cannot_be_detected_is_said_not_silenced(project: Project) -> None:
    use_models(project, UNDETECTABLE_V1)
    assert new_from_models(project.config, "tenant", "notes", now=earlier(1)).path is not None
    use_models(project, UNDETECTABLE_V2)
    r = project.cli("new", "tenant", "rename", "--autogenerate")
    assert r.exit_code == 0
    warnings = [line for line in r.output.splitlines() if line.startswith("warning: ")]
    assert any("columns dropped (title) and added (heading)" in w for w in warnings), warnings
    assert any("enum mood: values removed or reordered" in w for w in warnings), warnings
    assert any("unnamed CHECK constraint" in w for w in warnings), warnings
    assert len(warnings) == 3, warnings


def test_a_tenant_reference_to_a_public_table_not_yet_migrated_is_pointed_out(
    project: Project,
) -> None:
    use_models(project, MODELS_V1)
    result = new_from_models(project.config, "tenant", "first")
    assert result.path is not None
    assert any(
        "refers to public.plans, which no public migration creates yet" in w
        for w in result.warnings
    )


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_while_a_migration_runs_drops_the_throwaway_database(
    project: Project, sent: signal.Signals
) -> None:
    """A real process, interrupted while a migration runs in the throwaway database."""
    marker = uuid.uuid4().hex
    project.write("tenant", "0001_slow.sql", f"SELECT pg_sleep(600) /* {marker} */;")
    use_models(project, MODELS_V1)
    run = spawn(project, "new", "tenant", "initial", "--autogenerate")
    found: list[str] = []

    def sleeping() -> bool:
        found[:] = [
            r[0]
            for r in project.query(
                "SELECT datname FROM pg_stat_activity WHERE query LIKE %s",
                (f"%pg_sleep(600) /* {marker} */%",),
            )
            if r[0] and r[0].startswith("mtm_autogen_")
        ]
        return bool(found)

    try:
        wait_until(sleeping, timeout=240, message="the migration running in the throwaway database")
        run.send_signal(sent)
        out, err = run.communicate(timeout=240)
    finally:
        if run.poll() is None:  # the test failed: leave nothing on a shared server
            run.kill()
            run.wait()
            for name in found:
                project.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert run.returncode == Exit.INTERRUPTED, out + err
    assert "Traceback" not in err
    assert not database_exists(project, found[0])
    assert list(project.migrations.rglob("*.py")) == []


SHARED_MODELS = """
import sqlalchemy as sa
metadata = sa.MetaData()
sa.Table("plans", metadata, sa.Column("id", sa.Integer, primary_key=True), schema="public")
"""

TENANT_MODELS = """
import sqlalchemy as sa
metadata = sa.MetaData()
sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("plan_id", sa.ForeignKey("public.plans.id")),
)
"""


def test_several_metadata_objects_are_one_model_even_across_foreign_keys(
    project: Project,
) -> None:
    shared, tenant = use_models(project, SHARED_MODELS), use_models(project, TENANT_MODELS)
    (project.root / "mtm.toml").write_text(
        f'database_url = "{project.url}"\nmodels = ["{shared}:metadata", "{tenant}:metadata"]\n'
    )
    public = new_from_models(project.config, "public", "plans", now=earlier(2))
    assert public.path is not None and "op.create_table('plans'" in public.path.read_text()
    users = new_from_models(project.config, "tenant", "users", now=earlier(1))
    assert users.path is not None and users.warnings == []
    assert "['public.plans.id']" in users.path.read_text()
    (project.root / "mtm.toml").write_text(
        f'database_url = "{project.url}"\nmodels = ["{shared}:metadata", "{shared}:metadata"]\n'
    )
    assert new_from_models(project.config, "public", "same", now=earlier(0)).path is None
    twice = use_models(project, SHARED_MODELS)
    (project.root / "mtm.toml").write_text(
        f'database_url = "{project.url}"\nmodels = ["{shared}:metadata", "{twice}:metadata"]\n'
    )
    r = project.cli("new", "public", "twice", "--autogenerate")
    assert r.exit_code == 2 and r.output.startswith("error: two models define table public.plans")
