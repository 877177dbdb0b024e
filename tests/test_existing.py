"""``mtm create --existing``: registering schemas another tool made, one or a fleet,
without running anything; end to end through the CLI and the Python API."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import psycopg
import pytest

import mtm
from _reliability import fingerprint_row, ledger, spawn, tables, wait_until, waiting_on_schema_locks
from conftest import Project, _libpq
from mtm.existing import ExistingSchema
from mtm.locks import SCHEMA_LOCK_CLASS
from mtm.plan import fingerprint


def _three(project: Project) -> None:
    for i in (1, 2, 3):
        project.write("tenant", f"000{i}_t{i}.sql", f"CREATE TABLE t{i} (id int);")


def _made_by_hand(project: Project, *schemas: str) -> None:
    """Schemas with the structure of the first two migrations, made without mtm."""
    for s in schemas:
        q = '"' + s.replace('"', '""') + '"'
        project.query(
            f"CREATE SCHEMA {q}; CREATE TABLE {q}.t1 (id int); CREATE TABLE {q}.t2 (id int); "
            f"INSERT INTO {q}.t1 VALUES (7)"
        )


def _registered(project: Project) -> list[str]:
    if project.scalar("SELECT to_regclass('public.tenants')") is None:
        return []
    return [r[0] for r in project.query("SELECT schema_name FROM public.tenants ORDER BY 1")]


def _checksums(project: Project) -> dict[str, str]:
    return {m.name: m.checksum for m in mtm.commands.discover(project.migrations).tenant}


def test_existing_with_a_baseline_records_without_running(project: Project) -> None:
    _three(project)
    _made_by_hand(project, "acme")
    r = project.cli(
        "create", "acme", "--existing", "--baseline", "0002_t2", "--domain", "Acme.Example.com"
    )
    assert r.exit_code == 0, r.output
    assert r.output == (
        "registered existing schema acme as a tenant, 2 migrations up to 0002_t2 "
        "recorded as applied (not run)\n"
    )
    assert tables(project, "acme") == {"t1", "t2"}  # nothing created by mtm
    assert project.scalar("SELECT id FROM acme.t1") == 7  # data untouched
    files = _checksums(project)
    rows = project.query(
        "SELECT name, checksum, adopted, duration_ms FROM acme.mtm_migrations ORDER BY name"
    )
    assert rows == [
        ("0001_t1", files["0001_t1"], False, None),
        ("0002_t2", files["0002_t2"], False, None),
    ]
    assert fingerprint_row(project, "acme") == fingerprint(
        (n, files[n]) for n in ("0001_t1", "0002_t2")
    )
    tenant = mtm.MapperTable(project.url, project.config).lookup("acme.example.com")
    assert tenant is not None and tenant.schema == "acme"
    assert project.cli("validate").exit_code == 0
    r = project.cli("migrate")  # only the rest runs
    assert r.exit_code == 0, r.output
    assert tables(project, "acme") == {"t1", "t2", "t3"}
    assert ledger(project, "acme") == ["0001_t1", "0002_t2", "0003_t3"]
    assert project.scalar("SELECT duration_ms IS NOT NULL FROM acme.mtm_migrations "
                          "WHERE name = '0003_t3'")  # fmt: skip


def test_existing_without_a_baseline_records_nothing_and_never_runs_public(
    project: Project,
) -> None:
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    _three(project)
    _made_by_hand(project, "acme")
    result = mtm.create_existing(project.config, "acme", name="Acme")
    assert result.registered == ["acme"] and result.recorded == [] and result.baseline is None
    assert ledger(project, "acme") == []
    assert project.scalar("SELECT to_regclass('public.p')") is None  # public not run
    assert project.scalar("SELECT name FROM public.tenants") == "Acme"
    status = mtm.status(project.config)
    assert [(s.schema, s.applied) for s in status.tenants] == [("acme", 0)]
    _made_by_hand(project, "beta")
    result = mtm.create_existing(
        project.config, "beta", baseline="head", domains=["Beta.Example.com", "beta.example.com"]
    )
    assert result.recorded == ["0001_t1", "0002_t2", "0003_t3"] and result.baseline == "0003_t3"
    assert tables(project, "beta") == {"t1", "t2"}
    assert project.query("SELECT domain, is_primary FROM public.tenants_domains") == [
        ("beta.example.com", True)
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ghost", "--existing"], "error: schema 'ghost' does not exist: --existing registers"),
        (["acme", "--existing"], "error: tenant 'acme' is registered already"),
        (
            ["beta", "--existing", "--baseline", "0009_x"],
            "error: --baseline 0009_x: there is no tenant migration '0009_x'",
        ),
        (
            ["beta", "--existing", "--domain", "acme.example.com"],
            "error: domain 'acme.example.com' already belongs to tenant 'acme'",
        ),
        (["public", "--existing"], "error: schema name 'public' is reserved by PostgreSQL"),
        (["pg_catalog", "--existing"], "error: schema name 'pg_catalog' starts with pg_"),
        (['be"ta', "--existing"], "error: schema name 'be\"ta' is not a plain lower-case"),
        (["Beta", "--existing"], "error: schema name 'Beta' is not a plain lower-case"),
        (["beta", "--baseline", "0001_t1"], "error: --baseline, --from-file, --match and --yes"),
        (["beta", "--existing", "--role"], "error: --existing runs nothing and creates no role"),
        (["--existing"], "error: choose exactly one of SCHEMA, --from-file FILE or --match"),
        ([], "error: name the tenant's schema: mtm create SCHEMA"),
        (["--existing", "--match", "zz*"], "error: --match 'zz*' matches no schema"),
        (
            ["--existing", "--match", "b*", "--domain", "x.example.com"],
            "error: --domain and --name are for one SCHEMA",
        ),
        (
            ["orphan", "--existing"],
            "error: schema 'orphan' already has mtm's ledger table mtm_migrations but no "
            "registry row",
        ),
    ],
)
def test_existing_refusals(project: Project, args: list[str], message: str) -> None:
    _three(project)
    assert project.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    _made_by_hand(project, "beta", "Beta", 'be"ta')
    project.query("CREATE SCHEMA orphan; CREATE TABLE orphan.mtm_migrations "
                  "(name text PRIMARY KEY, checksum text, applied_at timestamptz)")  # fmt: skip
    before = project.query("SELECT * FROM public.mtm_migrations_state ORDER BY 1")
    r = project.cli("create", *args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith(message) and r.output.count("\n") == 1, r.output
    assert _registered(project) == ["acme"]
    assert ledger(project, "beta") == []
    assert project.query("SELECT * FROM public.mtm_migrations_state ORDER BY 1") == before


def test_existing_refusals_from_python(project: Project) -> None:
    _made_by_hand(project, "beta")
    with pytest.raises(mtm.MtmError, match="schema 'ghost' does not exist"):
        mtm.create_existing(project.config, "ghost")
    with pytest.raises(mtm.MtmError, match="choose exactly one of"):
        mtm.create_existing_many(project.config, schemas=["beta"], match="b*")
    _made_by_hand(project, "gamma")
    with pytest.raises(mtm.MtmError, match="refusing to register 2 schemas without --yes"):
        mtm.create_existing_many(project.config, schemas=["beta", "gamma"])
    with pytest.raises(mtm.MtmError, match="--match 'zz\\*' matches no schema"):
        mtm.create_existing_many(project.config, match="zz*")
    # refused before anything changed: not even mtm's own tables were made
    assert project.scalar("SELECT to_regclass('public.tenants')") is None
    result = mtm.create_existing_many(
        project.config,
        schemas=[ExistingSchema("beta", ("beta.example.com",), "Beta"), "gamma"],
        yes=True,
    )
    assert result.registered == ["beta", "gamma"] and result.ok and not result.skipped
    assert mtm.MapperTable(project.url, project.config).lookup("beta.example.com").name == "Beta"


def test_existing_waits_for_a_schema_another_command_holds(project: Project) -> None:
    """A registration waits for the schema's lock (held here as a migrate step, a
    create or a drop would hold it), then registers: nothing interleaves."""
    _three(project)
    _made_by_hand(project, "acme")
    holder = psycopg.connect(_libpq(project.url), autocommit=True)
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext('acme'))", (SCHEMA_LOCK_CLASS,))
        proc = spawn(project, "create", "acme", "--existing", "--baseline", "0001_t1")
        try:
            wait_until(
                lambda: waiting_on_schema_locks(project) == 1,
                message="create --existing waiting for acme's lock",
            )
            assert _registered(project) == []  # still waiting: nothing written yet
            holder.execute("COMMIT")
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        holder.close()
    assert proc.returncode == 0, err
    assert "registered existing schema acme" in out
    assert _registered(project) == ["acme"] and ledger(project, "acme") == ["0001_t1"]


def _fail_for(project: Project, schema: str) -> None:
    """An event trigger that refuses a CREATE TABLE in ``schema``: that schema's
    registration fails inside its transaction, after the checks passed."""
    project.query(
        "CREATE FUNCTION refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ "
        "BEGIN IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() "
        f"WHERE schema_name = '{schema}') THEN RAISE EXCEPTION 'no DDL in {schema}'; "
        "END IF; END $$; "
        "CREATE EVENT TRIGGER refuse_ddl ON ddl_command_end EXECUTE FUNCTION refuse_ddl()"
    )


@pytest.mark.slow
def test_existing_from_a_file_registers_a_fleet_one_transaction_each(
    project: Project, tmp_path: Path
) -> None:
    _three(project)
    names = [f"shop_{i:03d}" for i in range(300)]
    project.query(
        "DO $$ BEGIN FOR i IN 0..299 LOOP EXECUTE format("
        "'CREATE SCHEMA %I; CREATE TABLE %I.t1 (id int)', "
        "'shop_' || lpad(i::text, 3, '0'), 'shop_' || lpad(i::text, 3, '0')); "
        "END LOOP; END $$"
    )
    _fail_for(project, "shop_123")
    listing = tmp_path / "schemas.txt"
    lines = ["# schema  domains"] + [f"{n} {n.replace('_', '-')}.example.com" for n in names]
    listing.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    r = project.cli("create", "--existing", "--from-file", str(listing), "--baseline", "0001_t1")
    assert r.exit_code == 2
    assert r.output.splitlines() == [
        "will register 300 existing schemas (shop_000, shop_001, shop_002, shop_003, "
        "shop_004 ...), recording 1 tenant migration up to 0001_t1 as applied (not run)",
        "error: refusing to register 300 schemas without --yes (nothing was changed)",
    ]
    assert _registered(project) == []
    r = project.cli(
        "create", "--existing", "--from-file", str(listing), "--baseline", "0001_t1", "--yes"
    )
    assert r.exit_code == 1, r.output
    assert "FAILED shop_123: no DDL in shop_123" in r.output
    assert "registered 299 schemas in" in r.output and ", 1 failed; no migration was run" in (
        r.output
    )
    assert "300/300 schemas, 1 failed" in r.output  # the progress's last count
    registered = _registered(project)
    assert len(registered) == 299 and "shop_123" not in registered
    assert ledger(project, "shop_123") == []  # nothing of it is left
    assert project.scalar("SELECT count(*) FROM public.tenants_domains") == 299
    assert (
        project.scalar("SELECT count(*) FROM public.mtm_migrations_state WHERE applied = 1") == 299
    )
    project.query("DROP EVENT TRIGGER refuse_ddl")
    r = project.cli(  # the same command again: the registered ones are skipped
        "create", "--existing", "--from-file", str(listing), "--baseline", "0001_t1", "--yes"
    )
    assert r.exit_code == 0, r.output
    assert "skipping 299 schemas registered already" in r.output
    assert "shop_123: registered" in r.output
    assert len(_registered(project)) == 300
    r = project.cli("create", "--existing", "--from-file", str(listing), "--yes")
    assert r.exit_code == 0, r.output
    assert "nothing to register: every schema named is registered already" in r.output
    assert project.cli("validate").exit_code == 0
    result = json.loads(project.cli("migrate", "--json").output)
    assert result["ok"] and result["steps"] == 600  # t2 and t3 in each, t1 never
    assert tables(project, "shop_007") == {"t1", "t2", "t3"}


def test_existing_match_registers_the_unregistered_matches(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    _three(project)
    _made_by_hand(project, "shop_a", "shop_b", "shop_c", "other")
    assert project.cli("create", "shop_a", "--existing").exit_code == 0
    r = project.cli("create", "--existing", "--match", "shop_*", "--baseline", "head", "--yes")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == (
        "will register 2 existing schemas (shop_b, shop_c), recording 3 tenant migrations "
        "up to 0003_t3 as applied (not run)"
    )
    assert "shop_b: registered" in r.output and "registered 2 schemas" in r.output
    assert _registered(project) == ["shop_a", "shop_b", "shop_c"]
    assert ledger(project, "shop_c") == ["0001_t1", "0002_t2", "0003_t3"]
    assert tables(project, "shop_c") == {"t1", "t2"}  # t3 recorded, not run
    project.query('CREATE SCHEMA "shop_D"')
    r = project.cli("create", "--existing", "--match", "shop_*", "--yes")
    assert r.exit_code == 2
    assert r.output.startswith(
        "error: --match 'shop_*' matches a schema mtm cannot register: schema name 'shop_D'"
    )
    with caplog.at_level(logging.INFO, logger="mtm.tenant"):
        result = mtm.create_existing_many(project.config, match="oth*")
    assert result.registered == ["other"] and result.ok
    events = [(r.event, r.schema) for r in caplog.records if hasattr(r, "event")]  # type: ignore[attr-defined]
    assert ("tenant.register", "other") in events


def test_existing_file_refusals(project: Project, tmp_path: Path) -> None:
    _made_by_hand(project, "beta", "gamma")
    listing = tmp_path / "list.txt"
    cases = {
        "beta\ngamma\nbeta\n": "error: schema 'beta' is named twice",
        "beta x.example.com\ngamma x.example.com\n": "error: domain 'x.example.com' is given",
        "beta\npg_toast\n": "line 2: schema name 'pg_toast' starts with pg_",
        "beta\nghost\n": "error: schema 'ghost' does not exist",
        "# nothing\n": "names no schema",
    }
    for text, message in cases.items():
        listing.write_text(text, encoding="utf-8")
        r = project.cli("create", "--existing", "--from-file", str(listing), "--yes")
        assert r.exit_code == 2, r.output
        assert message in r.output and r.output.count("\n") == 1, r.output
    r = project.cli("create", "--existing", "--from-file", str(tmp_path / "none.txt"))
    assert r.exit_code == 2 and "cannot read --from-file" in r.output
    assert _registered(project) == []


def test_existing_one_schema_that_fails_inside_its_transaction_leaves_nothing(
    project: Project,
) -> None:
    _three(project)
    _made_by_hand(project, "acme")
    _fail_for(project, "acme")
    r = project.cli("create", "acme", "--existing", "--baseline", "0001_t1", "--domain", "a.test")
    assert r.exit_code == 1
    assert r.output.splitlines()[-1] == (
        "error: schema 'acme' was not registered: no DDL in acme (nothing was changed)"
    )
    assert "Traceback" not in r.output
    assert _registered(project) == [] and ledger(project, "acme") == []
    assert project.scalar("SELECT count(*) FROM public.tenants_domains") == 0
    assert project.scalar("SELECT count(*) FROM public.mtm_migrations_state") == 0
