"""``mtm adopt``: a database exactly as the original multi-tenant-migrate tool leaves it,
taken over with its own JSON config, then used as any mtm database."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

import mtm
from _reliability import wait_until, waiting_on_schema_locks
from conftest import Project, make_project
from mtm import catalog
from mtm.cli import cli
from mtm.config import sqlalchemy_url
from mtm.locks import SCHEMA_LOCK_CLASS
from mtm.plan import fingerprint

CONFIG = "tenants-config.json"
TENANT_A = "tenant:1546110701000-create-table-A.js"
TENANT_B = "tenant:1546110702000-create-table-B.js"
PUBLIC_1 = "public:1546110700000-create-plans.js"

# The original tool's own tables, created as its Sequelize models did.
LEGACY_PUBLIC = """
CREATE TABLE public.tenants (
    id serial PRIMARY KEY,
    domain varchar(255) NOT NULL UNIQUE,
    schema varchar(255) NOT NULL UNIQUE,
    "createdAt" timestamp with time zone NOT NULL,
    "updatedAt" timestamp with time zone NOT NULL
);
CREATE TABLE public.migrations (filename varchar(255) PRIMARY KEY);
INSERT INTO public.migrations VALUES ('public:1546110700000-create-plans.js');
CREATE TABLE public.plans (id serial PRIMARY KEY, code text NOT NULL UNIQUE);
INSERT INTO public.plans (code) VALUES ('basic');
INSERT INTO public.tenants (domain, schema, "createdAt", "updatedAt") VALUES
    ('alpha.example.com', 'alpha', '2019-01-02 03:04:05+00', '2019-02-03 04:05:06+00'),
    ('beta.example.com', 'beta', '2019-03-04 05:06:07+00', '2019-03-04 05:06:07+00');
"""

# What the two .js tenant migrations built in each tenant: a sequence, a FK inside the
# schema and one to public, an index, rows written by the first.
LEGACY_TENANT = """
CREATE SCHEMA {s};
CREATE TABLE {s}.migrations (filename varchar(255) PRIMARY KEY);
INSERT INTO {s}.migrations VALUES
    ('tenant:1546110701000-create-table-A.js'), ('tenant:1546110702000-create-table-B.js');
CREATE TABLE {s}.a (id serial PRIMARY KEY, name text NOT NULL,
    plan_id int REFERENCES public.plans (id));
INSERT INTO {s}.a (name) VALUES ('one'), ('two');
CREATE SEQUENCE {s}.invoice_numbers START 1000;
CREATE TABLE {s}.b (id serial PRIMARY KEY,
    a_id int NOT NULL REFERENCES {s}.a (id) ON DELETE CASCADE,
    number int NOT NULL DEFAULT nextval('{s}.invoice_numbers'));
CREATE INDEX b_a_id_idx ON {s}.b (a_id);
"""

JS_A = """module.exports = {
  up: async (queryInterface) => {
    await queryInterface.sequelize.query('CREATE TABLE a (id serial PRIMARY KEY, name text)');
    await queryInterface.bulkInsert('a', [{ name: 'one' }, { name: 'two' }]);
  },
};
"""
JS_B = "module.exports = { up: async (q) => q.sequelize.query('CREATE TABLE b (...)') };\n"
JS_P = "module.exports = { up: async (q) => q.sequelize.query('CREATE TABLE plans (...)') };\n"


@pytest.fixture
def legacy(tmp_path: Path, database_url: str) -> Project:
    """The original tool's project and database: two tenants at the same step."""
    project = make_project(tmp_path / "app", database_url)
    (project.root / "mtm.toml").unlink()
    for folder in ("public", "tenant"):
        (project.migrations / folder).rmdir()
    (project.root / CONFIG).write_text(
        json.dumps(
            {
                "tenantMapperTableName": "tenants",
                "migrationsTableName": "migrations",
                "migrationsDirectory": "migrations",
            }
        ),
        encoding="utf-8",
    )
    project.write("", TENANT_A, JS_A)
    project.write("", TENANT_B, JS_B)
    project.write("", PUBLIC_1, JS_P)
    project.query(LEGACY_PUBLIC)
    for schema in ("alpha", "beta"):
        project.query(LEGACY_TENANT.format(s=schema))
    return project


def run(project: Project, *args: str) -> Result:
    """The command line in-process, with the original tool's JSON config."""
    old = Path.cwd()
    os.chdir(project.root)
    try:
        return CliRunner().invoke(
            cli,
            ["--config", CONFIG, *args],
            catch_exceptions=False,
            env={"MTM_DATABASE_URL": project.url},
        )
    finally:
        os.chdir(old)


def config(project: Project) -> mtm.Config:
    return mtm.Config.load(project.root / CONFIG, env={"MTM_DATABASE_URL": project.url})


def relations(project: Project, schema: str) -> set[str]:
    return {
        r[0]
        for r in project.query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
            (schema,),
        )
    }


def ledger_rows(project: Project, schema: str) -> list[tuple[str, str | None, bool]]:
    return [
        (r[0], r[1], r[2])
        for r in project.query(
            f'SELECT name, checksum, adopted FROM "{schema}".migrations ORDER BY name COLLATE "C"'
        )
    ]


def baselines(project: Project) -> list[Path]:
    return sorted(project.migrations.glob("*mtm-baseline*"))


def untouched(project: Project) -> None:
    """Nothing was moved: the legacy tables as they were, no mtm table, no file."""
    assert relations(project, "public") == {"tenants", "migrations", "plans"}
    for schema in ("alpha", "beta"):
        if schema in project.schemas():
            assert relations(project, schema) >= {"migrations", "a", "b"}
            assert "migrations_legacy" not in relations(project, schema)
    assert baselines(project) == []


def catalog_of(project: Project, schema: str, url: str | None = None) -> catalog.SchemaCatalog:
    engine = sa.create_engine(sqlalchemy_url(url or project.url))
    try:
        with engine.connect() as conn:
            return catalog.describe(conn, schema, exclude=["migrations", "migrations_legacy"])
    finally:
        engine.dispose()


# --- the whole way -------------------------------------------------------------------------


def test_adopt_end_to_end(legacy: Project) -> None:
    project = legacy
    r = run(project, "adopt", "--dry-run")
    assert r.exit_code == 0, r.output
    out = r.output
    assert (
        'registry: "public"."tenants" -> "public"."tenants_legacy"; 2 tenants into mtm\'s '
        "registry: alpha (alpha.example.com), beta (beta.example.com)"
    ) in out
    assert (
        "public: ledger public.migrations -> public.migrations_legacy; records 2 migrations " in out
    )
    assert "(1546110700000-create-plans, " in out
    assert "tenants alpha, beta: ledger <schema>.migrations -> <schema>.migrations_legacy; " in out
    assert "each records 3 migrations (1546110701000-create-table-A, " in out
    assert "rows: new tenants get structure only, not the rows of a " in out
    assert f"legacy migrations that write rows: {TENANT_A}" in out
    assert "dry run: nothing was changed" in out
    untouched(project)
    planned = [ln.split()[1] for ln in out.splitlines() if ln.startswith("baseline: ")]

    r = run(project, "adopt")
    assert r.exit_code == 0, r.output
    assert "adopted 2 tenant schemas and public" in r.output
    [public_baseline, tenant_baseline] = baselines(project)
    assert planned == [str(public_baseline), str(tenant_baseline)]  # as the dry run said
    assert tenant_baseline.name == "tenant:1546110702000-create-table-B-mtm-baseline.sql"
    assert public_baseline.name.startswith("public:") and tenant_baseline.name.startswith("tenant:")
    tenant_name = tenant_baseline.name.removeprefix("tenant:").removesuffix(".sql")
    text = tenant_baseline.read_text()
    assert text.startswith("-- mtm:baseline\n")
    for fragment in ("alpha.", "OWNER TO", "set_config", "CREATE TABLE a ", "CREATE INDEX b_a_id"):
        assert (fragment in text) == fragment.startswith("CREATE"), fragment
    assert "CREATE TABLE plans" in public_baseline.read_text()
    assert "tenants" not in public_baseline.read_text()

    # the legacy tables are kept, renamed; mtm's tables took their names
    assert relations(project, "public") >= {"tenants_legacy", "migrations_legacy", "plans"}
    assert project.scalar("SELECT count(*) FROM public.tenants_legacy") == 2
    assert project.scalar("SELECT count(*) FROM alpha.migrations_legacy") == 2
    checksum = mtm.commands.discover(project.migrations).find("tenant", tenant_name)
    assert checksum is not None
    expected = [
        ("1546110701000-create-table-A", None, True),
        ("1546110702000-create-table-B", None, True),
        (tenant_name, checksum.checksum, True),
    ]
    assert ledger_rows(project, "alpha") == ledger_rows(project, "beta") == expected
    assert project.query(
        "SELECT schema_name, created_at::text, updated_at::text FROM public.tenants ORDER BY 1"
    ) == [
        ("alpha", "2019-01-02 03:04:05+00", "2019-02-03 04:05:06+00"),
        ("beta", "2019-03-04 05:06:07+00", "2019-03-04 05:06:07+00"),
    ]

    # every schema at the adopted step, nothing pending, validate clean
    r = run(project, "status", "--check")
    assert r.exit_code == 0, r.output
    status = mtm.status(config(project))
    assert [(t.schema, t.applied, t.total) for t in status.tenants] == [
        ("alpha", 3, 3),
        ("beta", 3, 3),
    ]
    assert (status.public.applied, status.public.total) == (2, 2)
    r = run(project, "validate")
    assert r.exit_code == 0, r.output
    assert "3 schemas checked: no problems" in r.output
    assert "3 migrations of the original tool recognised as adopted history (never run)" in r.output

    # the application finds both tenants
    mapper = mtm.MapperTable(project.url, config(project))
    try:
        for schema in ("alpha", "beta"):
            found = mapper.lookup(f"{schema.upper()}.example.com:443")
            assert found is not None and found.schema == schema
    finally:
        mapper.dispose()

    # a new .py tenant migration rolls out to both
    r = run(project, "new", "tenant", "add notes")
    assert r.exit_code == 0, r.output
    new = Path(project.root / r.output.strip())
    assert new.name.startswith("tenant:") and new.name > tenant_baseline.name
    new.write_text(
        "import sqlalchemy as sa\n\n\ndef up(op):\n"
        '    op.add_column("a", sa.Column("notes", sa.Text))\n',
        encoding="utf-8",
    )
    r = run(project, "migrate")
    assert r.exit_code == 0, r.output
    for schema in ("alpha", "beta"):
        columns = catalog_of(project, schema).of_kind("column")
        assert any(c.parent == "a" and c.name == "notes" for c in columns), schema
    assert run(project, "migrate").exit_code == 0  # nothing to do: the fast path agrees

    # a tenant created afterwards: the baseline instead of the .js history, same catalog
    r = run(project, "create", "gamma", "--domain", "gamma.example.com")
    assert r.exit_code == 0, r.output
    adopted = catalog_of(project, "alpha")
    assert catalog.compare(adopted, catalog_of(project, "gamma")) == []
    assert catalog.compare(adopted, catalog_of(project, "beta")) == []
    assert [(n, c is None) for n, c, _ in ledger_rows(project, "gamma")] == [
        (n, c is None) for n, c, _ in ledger_rows(project, "alpha")
    ]
    states = dict(
        project.query("SELECT schema_name, fingerprint FROM public.migrations_state")  # type: ignore[arg-type]
    )
    assert states["alpha"] == states["beta"] == states["gamma"]
    # the SQL's fingerprint counts the rows without a checksum, as plan.fingerprint does
    rows = ledger_rows(project, "gamma")
    assert states["gamma"] == fingerprint((n, c or "") for n, c, _ in rows)
    assert states["gamma"] != fingerprint((n, c) for n, c, _ in rows if c is not None)
    assert project.scalar("SELECT count(*) FROM gamma.a") == 0  # structure only
    r = run(project, "validate")
    assert r.exit_code == 0, r.output
    assert run(project, "status", "--check").exit_code == 0

    # adopting again changes nothing
    r = run(project, "adopt")
    assert r.exit_code == 0, r.output
    assert "nothing to adopt: this database is mtm's already" in r.output


def test_adopt_from_python(legacy: Project, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[mtm.commands.AdoptResult] = []
    dry = mtm.adopt(config(legacy), dry_run=True)
    assert dry.dry_run and dry.schemas == ["alpha", "beta"] and dry.rows_left == ["a"]
    untouched(legacy)
    with caplog.at_level(logging.INFO, logger="mtm.adopt"):
        result = mtm.adopt(config(legacy), include_rows=["a"], show=seen.append)
    events = [(r.event, r.schema) for r in caplog.records if r.name == "mtm.adopt"]  # type: ignore[attr-defined]
    assert events == [
        ("adopt.registry", "public"),
        ("adopt.schema", "alpha"),
        ("adopt.schema", "beta"),
    ]
    assert seen == [result]
    assert result.schemas == ["alpha", "beta"] and not result.dry_run
    assert result.reference == "alpha" and result.rows_left == [] and result.differ == []
    mtm.create(config(legacy), "gamma", domains=["gamma.example.com"])
    assert legacy.query("SELECT name FROM gamma.a ORDER BY id") == [("one",), ("two",)]
    assert mtm.adopt(config(legacy)).nothing


def test_an_adopted_project_builds_a_fresh_database(legacy: Project, server_url: str) -> None:
    """Another environment (CI, a developer's database): migrate records the .js history
    as superseded and runs the baselines; its tenants get the adopted structure."""
    assert run(legacy, "adopt").exit_code == 0
    name = f"mtm_test_{uuid.uuid4().hex[:12]}"
    admin = Project(legacy.root, server_url)
    admin.query(f'CREATE DATABASE "{name}"')
    fresh = Project(legacy.root, make_url(server_url).set(database=name).render_as_string(False))
    try:
        assert run(fresh, "migrate").exit_code == 0
        assert run(fresh, "create", "delta", "--domain", "delta.example.com").exit_code == 0
        assert run(fresh, "validate").exit_code == 0
        assert run(fresh, "status", "--check").exit_code == 0
        assert fresh.query("SELECT code FROM public.plans") == []  # structure, no rows
        assert ledger_rows(fresh, "delta") == [
            (n, c, c is None) for n, c, _ in ledger_rows(legacy, "alpha")
        ]
        built = catalog_of(fresh, "delta", fresh.url)
        assert catalog.compare(catalog_of(legacy, "alpha"), built) == []
    finally:
        admin.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- interrupted -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_adoption_completes_when_run_again(legacy: Project) -> None:
    """Killed once the registry, public and alpha are adopted and beta is not: every
    other command refuses, naming it; run again, adopt finishes."""
    project = legacy
    holder = psycopg.connect(project.url.replace("postgresql+psycopg", "postgresql"))
    holder.autocommit = True
    holder.execute("SELECT pg_advisory_lock(%s, hashtext('beta'))", (SCHEMA_LOCK_CLASS,))
    process = subprocess.Popen(
        [sys.executable, "-m", "mtm", "--config", CONFIG, "adopt"],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MTM_DATABASE_URL": project.url},
    )
    try:
        wait_until(lambda: waiting_on_schema_locks(project) == 1, message="adopt waits for beta")
        assert "migrations_legacy" in relations(project, "alpha")
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
        holder.close()
    assert "migrations_legacy" not in relations(project, "beta")
    for args in (("migrate",), ("create", "gamma"), ("status",)):
        r = project.run("--config", CONFIG, *args, env={"MTM_DATABASE_URL": project.url})
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.strip().splitlines() == [
            "error: the adoption of this database (mtm adopt) is unfinished: run 'mtm adopt' "
            "again to complete it; nothing was changed"
        ]
    assert "gamma" not in project.schemas()
    project.query("ALTER SCHEMA beta RENAME TO beta_away")
    r = run(project, "adopt")
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: refusing to adopt: schema beta, still to adopt, does not exist: restore it "
        "(or delete its rows from mtm's registry and from the adoption marker by hand) "
        "(nothing was changed)"
    )
    project.query("ALTER SCHEMA beta_away RENAME TO beta")
    r = run(project, "adopt", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "finishing an interrupted adoption" in r.output
    assert "tenants beta: " in r.output
    r = run(project, "adopt")
    assert r.exit_code == 0, r.output
    assert "adopted 1 tenant schema: run" in r.output
    assert ledger_rows(project, "alpha") == ledger_rows(project, "beta")
    assert run(project, "validate").exit_code == 0
    assert run(project, "status", "--check").exit_code == 0
    assert len(baselines(project)) == 2


# --- refusals: one line, exit 2, nothing moved -----------------------------------------------


def refused(project: Project, *args: str) -> str:
    r = run(project, "adopt", *args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    untouched(project)
    return lines[0]


def test_a_mapper_row_without_its_schema_is_refused(legacy: Project) -> None:
    legacy.query("DROP SCHEMA beta CASCADE")
    assert refused(legacy) == (
        'error: refusing to adopt: "public"."tenants" lists tenant beta (beta.example.com) but '
        "schema beta does not exist: restore the schema or remove its row (nothing was changed)"
    )


def test_a_ledger_naming_a_missing_file_is_refused(legacy: Project) -> None:
    (legacy.migrations / TENANT_B).unlink()
    line = refused(legacy)
    assert line.startswith(
        f"error: refusing to adopt: alpha: its ledger names {TENANT_B}, which is not in "
    )
    assert "restore the file (mtm keeps the original tool's files as history" in line
    assert "beta: its ledger names" in line


def test_a_duplicate_domain_is_refused(legacy: Project) -> None:
    legacy.query(LEGACY_TENANT.format(s="gamma"))
    legacy.query(
        'INSERT INTO public.tenants (domain, schema, "createdAt", "updatedAt") '
        "VALUES ('Alpha.Example.com', 'gamma', now(), now())"
    )
    assert refused(legacy) == (
        'error: refusing to adopt: "public"."tenants": domain \'Alpha.Example.com\' of gamma '
        "and 'alpha.example.com' of alpha are one domain to mtm (host names are compared in "
        "lower case): remove one of the rows (nothing was changed)"
    )


def test_tenants_at_different_steps_need_a_reference(legacy: Project) -> None:
    legacy.query("DELETE FROM beta.migrations WHERE filename = %s", (TENANT_B,))
    legacy.query("DROP INDEX beta.b_a_id_idx")
    assert refused(legacy) == (
        "error: refusing to adopt: tenants are at different steps of the original tool's "
        "history: beta at 1546110701000-create-table-A (1 migration); alpha at "
        "1546110702000-create-table-B (2 migrations); name the schema whose step and "
        "structure they all take with --reference SCHEMA (nothing was changed)"
    )
    assert refused(legacy, "--reference", "nope") == (
        'error: refusing to adopt: --reference nope: no such tenant in "public"."tenants" '
        "(nothing was changed)"
    )
    r = run(legacy, "adopt", "--reference", "alpha")
    assert r.exit_code == 0, r.output
    assert "not at alpha's step, recorded at it anyway: beta" in r.output
    assert "structure unlike alpha's (compare them): beta" in r.output
    assert ledger_rows(legacy, "alpha") == ledger_rows(legacy, "beta")
    assert legacy.query("SELECT filename FROM beta.migrations_legacy") == [(TENANT_A,)]


def test_a_legacy_file_no_schema_ran_is_refused(legacy: Project) -> None:
    legacy.write("", "tenant:1546110703000-create-table-C.js", JS_B)
    assert refused(legacy) == (
        "error: refusing to adopt: tenant:1546110703000-create-table-C.js is in "
        f"{legacy.migrations} but alpha never ran it: run it with the original tool first, "
        "or remove the file (nothing was changed)"
    )


def test_a_legacy_name_taken_already_is_refused(legacy: Project) -> None:
    legacy.query("CREATE TABLE beta.migrations_legacy (x int)")
    r = run(legacy, "adopt")
    assert r.exit_code == 2
    assert r.output.strip() == (
        'error: refusing to adopt: "beta"."migrations_legacy" exists already: adopt keeps the '
        "original tool's tables under such names (rename or drop it) (nothing was changed)"
    )
    legacy.query("DROP TABLE beta.migrations_legacy")
    untouched(legacy)


@pytest.mark.slow
def test_a_failed_transaction_is_one_line_and_run_again_finishes(legacy: Project) -> None:
    """A tenant's transaction fails (an index of its legacy ledger cannot take its new
    name): one line, exit 1, that schema rolled back whole, the others kept; once the
    cause is gone, adopt run again finishes."""
    legacy.query("CREATE TABLE beta.migrations_legacy_pkey (x int)")
    r = run(legacy, "adopt")
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error: adopting schema beta failed: ")
    assert last.endswith(
        "it was rolled back (what was adopted before stays): run 'mtm adopt' again"
    )
    assert "migrations_legacy" in relations(legacy, "alpha")
    assert relations(legacy, "beta") == {"migrations", "a", "b", "migrations_legacy_pkey"}
    assert run(legacy, "migrate").exit_code == 2
    legacy.query("DROP TABLE beta.migrations_legacy_pkey")
    r = run(legacy, "adopt")
    assert r.exit_code == 0, r.output
    assert ledger_rows(legacy, "alpha") == ledger_rows(legacy, "beta")
    assert run(legacy, "validate").exit_code == 0


def test_a_database_without_the_mapper_is_refused(project: Project) -> None:
    r = project.cli("adopt")
    assert r.exit_code == 2
    assert r.output.strip() == (
        'error: there is no mapper table "public"."tenants" of the original multi-tenant-migrate '
        "tool in this database: nothing to adopt (tenantMapperTableName in the config names it)"
    )


def test_js_files_are_never_run_without_an_adoption(project: Project) -> None:
    """A .js file is recorded only as superseded by a baseline after it: without one
    (no adoption), migrate and create refuse, naming it."""
    assert project.cli("create", "acme").exit_code == 0
    project.write("tenant", "0001_old.js", JS_B)
    never = (
        "0001_old.js is a migration of the original tool, which mtm never runs (adopt the "
        "database with 'mtm adopt', or rewrite it as .py or .sql)"
    )
    r = project.cli("migrate")
    assert r.exit_code == 2 and f"acme: {never}" in r.output, r.output
    r = project.cli("create", "globex")
    assert r.exit_code == 2
    assert r.output.strip() == f"error: refusing to create: globex: {never} (nothing was changed)"
    assert project.schemas() == {"acme"}
    assert project.query("SELECT name FROM acme.mtm_migrations") == []


def test_adopted_rows_count_in_the_fingerprint() -> None:
    """An adopted row has no checksum; it still changes the fingerprint."""
    assert fingerprint([("a", ""), ("b", "x")]) != fingerprint([("b", "x")])


def test_repair_leaves_adopted_rows_without_a_checksum(legacy: Project) -> None:
    """An adopted row has no checksum to re-record: repair finds nothing to change."""
    assert run(legacy, "adopt").exit_code == 0
    r = run(legacy, "repair", "1546110701000-create-table-A", "--all-tenants", "--yes")
    assert r.exit_code == 2, r.output
    assert ledger_rows(legacy, "alpha")[0] == ("1546110701000-create-table-A", None, True)
    assert run(legacy, "validate").exit_code == 0
