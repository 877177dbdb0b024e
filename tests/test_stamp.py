"""``mtm stamp`` (record or remove ledger rows without running migrations) and
``mtm migrate --to`` (one namespace up to a named migration), end to end."""

from __future__ import annotations

import json
import logging

import pytest

import mtm
from _reliability import (
    fingerprint_row,
    ledger,
    spawn,
    tables,
    wait_until,
    waiting_on_gate,
    waiting_on_schema_locks,
)
from conftest import Project
from mtm.plan import fingerprint
from test_reliability_locks import GATE, gate


def _three(project: Project) -> None:
    for i in (1, 2, 3):
        project.write(
            "tenant",
            f"000{i}_t{i}.sql",
            f"CREATE TABLE t{i} (id int);\n-- mtm:down\nDROP TABLE t{i};",
        )


def _state(project: Project, schema: str) -> tuple[int, str | None]:
    row = project.query(
        "SELECT applied, last_migration FROM public.mtm_migrations_state WHERE schema_name = %s",
        (schema,),
    )
    return (row[0][0], row[0][1]) if row else (0, None)


def _expected_fingerprint(project: Project, names: list[str]) -> str:
    files = {m.name: m.checksum for m in mtm.commands.discover(project.migrations).tenant}
    return fingerprint((n, files[n]) for n in names)


# --- migrate --to ------------------------------------------------------------------------


def test_migrate_to_a_tenant_migration_and_no_further(project: Project) -> None:
    assert project.cli("create", "acme").exit_code == 0  # before any file: at 0
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    _three(project)
    r = project.cli("migrate", "--to", "tenant:0002_t2", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "acme: would apply 0001_t1, 0002_t2" in r.output
    assert "the public schema was left as is" in r.output
    r = project.cli("migrate", "--to", "tenant:0002_t2", "--dry-run", "--json")
    plan = json.loads(r.output)
    assert plan["to"] == "tenant:0002_t2"
    assert plan["plan"] == {"public": [], "tenants": {"acme": ["0001_t1", "0002_t2"]}}
    assert ledger(project, "acme") == []  # the dry runs changed nothing
    r = project.cli("migrate", "--to", "tenant:0002_t2")
    assert r.exit_code == 0, r.output
    assert ledger(project, "acme") == ["0001_t1", "0002_t2"]
    assert tables(project, "acme") == {"t1", "t2"}
    assert project.scalar("SELECT to_regclass('public.p')") is None  # public untouched
    assert _state(project, "acme") == (2, "0002_t2")
    r = project.cli("migrate", "--to", "tenant:0002_t2", "--json")
    assert json.loads(r.output)["steps"] == 0  # at the target: nothing to do
    assert project.cli("migrate").exit_code == 0
    assert tables(project, "acme") == {"t1", "t2", "t3"}
    assert project.scalar("SELECT to_regclass('public.p')") is not None


def test_migrate_to_public_leaves_tenants_alone(project: Project) -> None:
    assert project.cli("create", "acme").exit_code == 0
    project.write("public", "0001_p1.sql", "CREATE TABLE p1 (id int);")
    project.write("public", "0002_p2.sql", "CREATE TABLE p2 (id int);")
    _three(project)
    r = project.cli("migrate", "--to", "public:0001_p1")
    assert r.exit_code == 0, r.output
    assert ledger(project, "public") == ["0001_p1"]
    assert ledger(project, "acme") == []
    assert "the tenants were left as is" in r.output
    assert "1 step applied, public migrated, 0 tenants migrated" in r.output


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("tenant:0009_nope", "error: --to tenant:0009_nope: there is no tenant migration"),
        ("public:0001_t1", "error: --to public:0001_t1: there is no public migration"),
        ("0001_t1", "error: --to takes tenant:NAME or public:NAME, not '0001_t1'"),
        (
            "tenant:0001_t1",
            "error: refusing to migrate --to tenant:0001_t1: schema acme is "
            "already past it (0002_t2 is applied)",
        ),
    ],
)
def test_migrate_to_refusals(project: Project, to: str, message: str) -> None:
    _three(project)
    (project.migrations / "tenant" / "0003_t3.sql").unlink()
    assert project.cli("create", "acme").exit_code == 0
    _three(project)
    r = project.cli("migrate", "--to", to)
    assert r.exit_code == 2
    assert r.output.startswith(message) and r.output.count("\n") == 1, r.output
    assert ledger(project, "acme") == ["0001_t1", "0002_t2"]  # nothing changed
    assert "Traceback" not in r.output


# --- stamp -------------------------------------------------------------------------------


def test_stamp_a_tenant_records_without_running(project: Project) -> None:
    assert project.cli("create", "acme").exit_code == 0
    _three(project)
    r = project.cli("stamp", "0002_t2", "--tenant", "acme")
    assert r.exit_code == 0, r.output
    assert "acme: record as applied (not run) 0001_t1, 0002_t2" in r.output
    assert tables(project, "acme") == set()  # nothing ran
    rows = project.query("SELECT name, checksum FROM acme.mtm_migrations ORDER BY name")
    files = {m.name: m.checksum for m in mtm.commands.discover(project.migrations).tenant}
    assert rows == [("0001_t1", files["0001_t1"]), ("0002_t2", files["0002_t2"])]
    assert _state(project, "acme") == (2, "0002_t2")
    assert fingerprint_row(project, "acme") == _expected_fingerprint(
        project, ["0001_t1", "0002_t2"]
    )
    status = json.loads(project.cli("status", "--json").output)
    assert project.cli("validate").exit_code == 0
    assert "0003_t3" in json.dumps(status) and "acme" in json.dumps(status)
    r = project.cli("migrate")  # runs only the rest
    assert r.exit_code == 0, r.output
    assert tables(project, "acme") == {"t3"}
    assert ledger(project, "acme") == ["0001_t1", "0002_t2", "0003_t3"]
    r = project.cli("stamp", "head", "--tenant", "acme")
    assert r.exit_code == 0 and "nothing to stamp" in r.output


def test_migrate_to_from_python(project: Project) -> None:
    assert project.cli("create", "acme").exit_code == 0
    _three(project)
    result = mtm.migrate(project.config, to="tenant:0001_t1")
    assert result.ok and result.steps == 1 and result.to == "tenant:0001_t1"
    assert ledger(project, "acme") == ["0001_t1"]
    with pytest.raises(mtm.MtmError, match="there is no tenant migration"):
        mtm.migrate(project.config, to="tenant:0004_t4")


def test_stamp_logs_each_schema(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    assert project.cli("create", "acme").exit_code == 0
    _three(project)
    with caplog.at_level(logging.INFO, logger="mtm.stamp"):
        result = mtm.stamp(project.config, "0001_t1", tenants=["acme"])
    assert [c.schema for c in result.changes] == ["acme"]
    records = [r for r in caplog.records if getattr(r, "event", None) == "stamp.schema"]
    assert [(r.schema, r.recorded, r.deleted) for r in records] == [  # type: ignore[attr-defined]
        ("acme", ["0001_t1"], [])
    ]


def test_stamp_delete_removes_records_without_running_downs(project: Project) -> None:
    _three(project)
    assert project.cli("create", "acme").exit_code == 0
    r = project.cli("stamp", "0002_t2", "--delete", "--tenant", "acme", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["schemas"] == [
        {"schema": "acme", "recorded": [], "deleted": ["0002_t2", "0003_t3"]}
    ]
    assert ledger(project, "acme") == ["0001_t1"]
    assert tables(project, "acme") == {"t1", "t2", "t3"}  # no down ran
    assert _state(project, "acme") == (1, "0001_t1")
    assert fingerprint_row(project, "acme") == _expected_fingerprint(project, ["0001_t1"])
    assert project.cli("validate").exit_code == 0


def test_stamp_public_head_and_all_tenants_needs_yes(project: Project) -> None:
    for schema in ("acme", "beta"):
        assert project.cli("create", schema).exit_code == 0
    _three(project)
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    r = project.cli("stamp", "head", "--all-tenants")
    assert r.exit_code == 2
    lines = r.output.splitlines()
    assert lines == [
        "acme: record as applied (not run) 0001_t1, 0002_t2, 0003_t3",
        "beta: record as applied (not run) 0001_t1, 0002_t2, 0003_t3",
        "error: refusing to stamp 2 schemas without --yes (nothing was changed)",
    ]
    assert ledger(project, "acme") == [] and ledger(project, "beta") == []
    r = project.cli("stamp", "head", "--all-tenants", "--yes")
    assert r.exit_code == 0, r.output
    assert "stamped 2 schemas" in r.output
    assert ledger(project, "acme") == ledger(project, "beta") == ["0001_t1", "0002_t2", "0003_t3"]
    r = project.cli("stamp", "head", "--public")
    assert r.exit_code == 0, r.output
    assert ledger(project, "public") == ["0001_p"]
    assert project.scalar("SELECT to_regclass('public.p')") is None
    assert project.cli("validate").exit_code == 0
    r = project.cli("migrate", "--json")
    assert json.loads(r.output)["steps"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0009_nope", "--tenant", "acme"], "error: there is no tenant migration '0009_nope'"),
        (["0001_t1", "--tenant", "ghost"], "error: no tenant 'ghost' is registered"),
        (["0001_t1"], "error: choose exactly one of --tenant SCHEMA, --all-tenants or --public"),
        (["head", "--public"], "error: there are no public migrations to stamp"),
        (
            ["0002_t2", "--tenant", "acme"],
            "error: refusing to stamp anything: acme: migration "
            "0001_t1 was edited after it was applied",
        ),
    ],
)
def test_stamp_refusals(project: Project, args: list[str], message: str) -> None:
    project.write("tenant", "0001_t1.sql", "CREATE TABLE t1 (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write("tenant", "0001_t1.sql", "CREATE TABLE t1 (id bigint);")  # edited
    project.write("tenant", "0002_t2.sql", "CREATE TABLE t2 (id int);")
    before = project.query("SELECT * FROM public.mtm_migrations_state ORDER BY schema_name")
    r = project.cli("stamp", *args)
    assert r.exit_code == 2
    assert r.output.startswith(message) and r.output.count("\n") == 1, r.output
    assert ledger(project, "acme") == ["0001_t1"]
    assert project.query("SELECT * FROM public.mtm_migrations_state ORDER BY schema_name") == before


@pytest.mark.slow
def test_stamp_waits_for_a_migrate_holding_the_schema(project: Project) -> None:
    """A stamp planned while a migrate is inside the schema waits for its lock, then
    refuses (the ledger moved): the migrate's rows stand, nothing interleaves."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write(
        "tenant",
        "0002_gated.sql",
        f"SELECT pg_advisory_xact_lock({GATE});\nCREATE TABLE gated (id int);",
    )
    with gate(project) as g:
        run = spawn(project, "migrate")
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="migrate inside acme")
            stamp = spawn(project, "stamp", "0002_gated", "--tenant", "acme")
            wait_until(
                lambda: waiting_on_schema_locks(project) == 1,
                message="stamp waiting for acme's lock",
            )
            g.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            _, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
            out, err = stamp.communicate(timeout=60)
        finally:
            for p in (run,):
                if p.poll() is None:
                    p.kill()
    assert "acme: record as applied (not run) 0002_gated" in out
    assert stamp.returncode == 1
    assert err.startswith("error: the ledger of schema acme changed while stamp waited"), err
    assert ledger(project, "acme") == ["0001_items", "0002_gated"]
    assert tables(project, "acme") == {"items", "gated"}
    assert project.scalar(
        "SELECT duration_ms IS NOT NULL FROM acme.mtm_migrations WHERE name = '0002_gated'"
    )  # the row is migrate's, which ran the step


def test_stamp_public_on_a_fresh_database_makes_mtm_tables(project: Project) -> None:
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    r = project.cli("stamp", "head", "--public")
    assert r.exit_code == 0, r.output
    assert ledger(project, "public") == ["0001_p"]
    assert project.scalar("SELECT to_regclass('public.p')") is None
    assert fingerprint_row(project, "public") is not None
    assert project.cli("validate").exit_code == 0
    assert json.loads(project.cli("migrate", "--json").output)["steps"] == 0
