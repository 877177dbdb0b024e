"""Seeds: data for new tenants, run in the create's transaction after the migrations.

A failing seed leaves no tenant; ``mtm seed`` runs it again in a transaction of its own;
``--no-seed`` and ``--no-migrate`` skip it; a bad seed is refused before anything changes.
"""

from __future__ import annotations

import json
import uuid

import pytest

import mtm
from conftest import Project, make_project

SETTINGS = "CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);\n"


def _project(project: Project, seed: str) -> Project:
    p = make_project(project.root, project.url, f'seed = "{seed}"\n')
    p.write("tenant", "0001_settings.sql", SETTINGS)
    return p


def _settings(project: Project, schema: str) -> list[tuple[str, str]]:
    return [
        (r[0], r[1]) for r in project.query(f"SELECT key, value FROM {schema}.settings ORDER BY 1")
    ]


def _nothing_of(project: Project, schema: str, domain: str) -> None:
    """The tenant left nothing: schema, registry row, domains, state row, role."""
    assert schema not in project.schemas()
    assert project.scalar("SELECT count(*) FROM tenants WHERE schema_name = %s", (schema,)) == 0
    assert project.scalar("SELECT count(*) FROM tenants_domains WHERE domain = %s", (domain,)) == 0
    assert (
        project.scalar(
            "SELECT count(*) FROM mtm_migrations_state WHERE schema_name = %s", (schema,)
        )
        == 0
    )
    assert (
        project.scalar(
            "SELECT count(*) FROM pg_roles WHERE rolname = %s", (f"mtm_tenant_{schema}",)
        )
        == 0
    )


def test_a_sql_seed_runs_in_the_create_after_the_migrations(project: Project) -> None:
    p = _project(project, "seeds/tenant.sql")
    (p.root / "seeds").mkdir()
    (p.root / "seeds" / "tenant.sql").write_text(
        "INSERT INTO settings VALUES ('theme', 'light'), ('schema', current_schema());\n"
    )
    r = p.cli("create", "acme", "--domain", "acme.example.com")
    assert r.exit_code == 0, r.output
    assert _settings(p, "acme") == [("schema", "acme"), ("theme", "light")]
    # --no-seed, and --no-migrate (no tables for it), skip it
    assert p.cli("create", "plain", "--no-seed").exit_code == 0
    assert _settings(p, "plain") == []
    assert p.cli("create", "bare", "--no-migrate").exit_code == 0
    assert p.scalar("SELECT to_regclass('bare.settings')") is None


def test_a_python_seed_gets_the_connection_and_the_tenant(project: Project) -> None:
    module = f"seeds_{uuid.uuid4().hex[:8]}"
    p = _project(project, f"{module}:seed")
    (p.root / f"{module}.py").write_text(
        "import sqlalchemy as sa\n\n"
        "def seed(conn, tenant):\n"
        "    conn.execute(sa.text('INSERT INTO settings VALUES (:k, :v)'),\n"
        "                 {'k': 'name', 'v': f'{tenant.name}/{tenant.domains[0]}'})\n"
    )
    config = p.config
    result = mtm.create(config, "globex", name="Globex", domains=["globex.example.com"])
    assert result.applied == ["0001_settings"]
    assert _settings(p, "globex") == [("name", "Globex/globex.example.com")]
    with mtm.connect(config) as db:
        db.create("initech", seed=False)
    assert _settings(p, "initech") == []


@pytest.mark.parametrize("kind", ["sql", "python", "python-commit"])
def test_a_failing_seed_leaves_no_tenant(project: Project, kind: str) -> None:
    module = f"seeds_{uuid.uuid4().hex[:8]}"
    spec = "seeds/tenant.sql" if kind == "sql" else f"{module}:seed"
    p = _project(project, spec)
    (p.root / "seeds").mkdir()
    (p.root / "seeds" / "tenant.sql").write_text(
        "INSERT INTO settings VALUES ('a', 'b');\nINSERT INTO settings VALUES ('c', NULL);\n"
    )
    body = "    conn.commit()\n" if kind == "python-commit" else "    raise ValueError('no plan')\n"
    (p.root / f"{module}.py").write_text(
        "import sqlalchemy as sa\n\ndef seed(conn, tenant):\n"
        "    conn.execute(sa.text(\"INSERT INTO settings VALUES ('a', 'b')\"))\n" + body
    )
    r = p.cli("create", "acme", "--domain", "acme.example.com", "--role")
    assert r.exit_code == 1, r.output
    last = r.output.splitlines()[-1]
    assert last.startswith(f"error: tenant 'acme' was not created: the seed {spec} failed: ")
    assert last.endswith("(nothing was left behind)")
    assert "Traceback" not in r.output
    expected = {
        "sql": 'null value in column "value"',
        "python": "ValueError: no plan",
        "python-commit": "TransactionControlRefused: sent commit() inside mtm's transaction",
    }[kind]
    assert expected in last
    _nothing_of(p, "acme", "acme.example.com")


def test_mtm_seed_runs_it_again_in_its_own_transaction(project: Project) -> None:
    p = _project(project, "seeds/tenant.sql")
    p.write("tenant", "0002_visits.sql", "CREATE TABLE visits (n int NOT NULL);")
    (p.root / "seeds").mkdir()
    seed = p.root / "seeds" / "tenant.sql"
    seed.write_text("INSERT INTO visits VALUES (1);\n")
    assert p.cli("create", "acme").exit_code == 0
    assert p.scalar("SELECT count(*) FROM acme.visits") == 1
    r = p.cli("seed", "acme")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("seeded tenant acme with seeds/tenant.sql in ")
    assert p.scalar("SELECT count(*) FROM acme.visits") == 2
    # from Python too
    assert mtm.seed(p.config, "acme").schema == "acme"
    assert p.scalar("SELECT count(*) FROM acme.visits") == 3
    # a failure midway keeps nothing of it
    seed.write_text("INSERT INTO visits VALUES (1);\nINSERT INTO visits VALUES (NULL);\n")
    r = p.cli("seed", "acme")
    assert r.exit_code == 1, r.output
    last = r.output.splitlines()[-1]
    assert last.startswith("error: the seed seeds/tenant.sql of tenant 'acme' failed: null value")
    assert last.endswith("(nothing of it was kept)")
    assert p.scalar("SELECT count(*) FROM acme.visits") == 3
    r = p.cli("seed", "nope")
    assert r.exit_code == 2 and r.output == "error: no tenant 'nope' is registered\n"
    # the seed is not a migration: migrate does not replay it
    assert p.cli("migrate").exit_code == 0
    assert p.scalar("SELECT count(*) FROM acme.visits") == 3
    # a real process, logging the seed it ran
    seed.write_text("INSERT INTO visits VALUES (1);\n")
    r = p.run("-v", "--log-format", "json", "seed", "acme")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines()]
    assert [(e["event"], e["schema"]) for e in events if e["event"].startswith("tenant.")] == [
        ("tenant.seed", "acme")
    ]
    assert p.scalar("SELECT count(*) FROM acme.visits") == 4


def test_mtm_seed_without_a_seed_configured(project: Project) -> None:
    assert project.cli("create", "acme").exit_code == 0
    r = project.cli("seed", "acme")
    assert r.exit_code == 2 and r.output.startswith("error: no seed is configured"), r.output


def test_a_seed_after_a_migration_outside_a_transaction(project: Project) -> None:
    """Then the seed runs after the last migration, in a transaction of its own."""
    p = _project(project, "seeds/tenant.sql")
    p.write(
        "tenant",
        "0002_index.sql",
        "-- mtm:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS s_v ON settings (value);",
    )
    (p.root / "seeds").mkdir()
    seed = p.root / "seeds" / "tenant.sql"
    seed.write_text("INSERT INTO settings VALUES ('a', 'b');\n")
    assert p.cli("create", "acme").exit_code == 0
    assert _settings(p, "acme") == [("a", "b")]
    seed.write_text(
        "INSERT INTO settings VALUES ('a', 'b');\nINSERT INTO settings VALUES ('c', NULL);\n"
    )
    r = p.cli("create", "globex")
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: tenant 'globex' was created, but its seed seeds/tenant.sql")
    assert "fix it and run 'mtm seed globex'" in r.output
    assert _settings(p, "globex") == []
    assert p.scalar("SELECT count(*) FROM globex.mtm_migrations") == 2


@pytest.mark.parametrize(
    ("seed", "content", "message"),
    [
        ("seeds/missing.sql", None, "seed file {root}/seeds/missing.sql cannot be read"),
        ("seeds/tenant.sql", "-- nothing\n", "holds no SQL statement"),
        ("seeds/tenant.sql", "INSERT INTO settings VALUES ('a', 'b');\nCOMMIT;\n", "'COMMIT'"),
        ("seeds/tenant.sql", "INSERT INTO;\n", "syntax error in the seed script"),
        ("seeds.tenant", None, "is neither a .sql file (seeds/tenant.sql) nor a Python function"),
        ("no_such_module_xyz:seed", None, "importing no_such_module_xyz failed: ModuleNotFound"),
        ("json:no_such_function", None, "json has no function no_such_function"),
    ],
)
def test_a_bad_seed_is_refused_before_anything_changes(
    project: Project, seed: str, content: str | None, message: str
) -> None:
    p = _project(project, seed)
    if content is not None:
        (p.root / "seeds").mkdir()
        (p.root / "seeds" / "tenant.sql").write_text(content)
    r = p.cli("create", "acme", "--domain", "acme.example.com")
    assert r.exit_code == 2, r.output
    assert message.format(root=p.root) in r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1
    assert p.schemas() == set()
    assert p.scalar("SELECT to_regclass('public.tenants')") is None


def test_create_existing_never_seeds(project: Project) -> None:
    """A schema another tool made holds its own data: registering it runs no seed."""
    p = _project(project, "seeds/tenant.sql")
    (p.root / "seeds").mkdir()
    (p.root / "seeds" / "tenant.sql").write_text("INSERT INTO settings VALUES ('a', 'b');\n")
    p.query(f"CREATE SCHEMA legacy; SET search_path TO legacy; {SETTINGS}")
    r = p.cli("create", "legacy", "--existing", "--baseline", "0001_settings")
    assert r.exit_code == 0, r.output
    assert p.scalar("SELECT count(*) FROM tenants WHERE schema_name = 'legacy'") == 1
    assert _settings(p, "legacy") == []
