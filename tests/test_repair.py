"""``mtm repair``: re-record an edited migration's checksum, with an audit row; never
runs migration code; end to end through the CLI and the Python API."""

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

EDITED = "CREATE TABLE t1 (id int);\n-- reviewed: a comment added after it ran\n"


def _files(project: Project) -> dict[str, str]:
    return {m.name: m.checksum for m in mtm.commands.discover(project.migrations).tenant}


def _checksum(project: Project, schema: str, name: str) -> str | None:
    return project.scalar(
        f'SELECT checksum FROM "{schema}".mtm_migrations WHERE name = %s', (name,)
    )


def _audit(project: Project) -> list[tuple[object, ...]]:
    return project.query(
        "SELECT schema_name, migration, old_checksum, new_checksum FROM "
        "public.mtm_migrations_repairs ORDER BY id"
    )


def _fleet(project: Project) -> str:
    """Two tenants at 0002; then 0001's file is edited. Its old checksum."""
    project.write("tenant", "0001_t1.sql", "CREATE TABLE t1 (id int);")
    project.write("tenant", "0002_t2.sql", "CREATE TABLE t2 (id int);")
    for schema in ("acme", "beta"):
        assert project.cli("create", schema).exit_code == 0
    old = _files(project)["0001_t1"]
    project.write("tenant", "0001_t1.sql", EDITED)
    return old


def test_repair_one_tenant_keeps_the_old_checksum_in_the_audit(project: Project) -> None:
    old = _fleet(project)
    new = _files(project)["0001_t1"]
    assert project.cli("validate").exit_code == 1  # the edit is caught
    r = project.cli("repair", "0001_t1", "--tenant", "acme")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        f"acme: re-record 0001_t1: checksum {old[:12]} -> {new[:12]}",
        "repaired 1 schema; no migration was run (the old checksums are in 'mtm repair --list')",
    ]
    assert _checksum(project, "acme", "0001_t1") == new
    assert _checksum(project, "beta", "0001_t1") == old  # not chosen: untouched
    assert _audit(project) == [("acme", "0001_t1", old, new)]
    who = project.scalar("SELECT repaired_by FROM public.mtm_migrations_repairs")
    user = project.scalar("SELECT current_user")
    assert who.startswith(f"{user} (os user ") and who.endswith(")")
    assert fingerprint_row(project, "acme") == fingerprint(_files(project).items())
    assert tables(project, "acme") == {"t1", "t2"}  # nothing ran
    r = project.cli("validate")
    assert "acme" not in r.output and "beta: migration 0001_t1 was edited" in r.output
    r = project.cli("repair", "--list")
    assert r.exit_code == 0 and "acme" in r.output and "0001_t1" in r.output, r.output
    [row] = json.loads(project.cli("repair", "--list", "--json").output)
    assert (row["schema"], row["old_checksum"], row["new_checksum"]) == ("acme", old, new)
    assert row["repaired_by"] == who and row["repaired_at"]
    rows = json.loads(project.cli("repair", "--list", "--tenant", "beta", "--json").output)
    assert rows == []


def test_repair_all_tenants_needs_yes_then_validate_is_clean(project: Project) -> None:
    old = _fleet(project)
    new = _files(project)["0001_t1"]
    r = project.cli("repair", "0001_t1", "--all-tenants")
    assert r.exit_code == 2
    assert r.output.splitlines()[-1] == (
        "error: refusing to repair 2 schemas without --yes (nothing was changed)"
    )
    assert _audit(project) == []
    r = project.cli("repair", "0001_t1", "--all-tenants", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["schemas"] == [
        {"schema": "acme", "old_checksum": old, "new_checksum": new},
        {"schema": "beta", "old_checksum": old, "new_checksum": new},
    ]
    assert project.cli("validate").exit_code == 0
    assert json.loads(project.cli("migrate", "--json").output)["steps"] == 0  # the no-op path
    assert len(_audit(project)) == 2


def test_repair_public_from_python_logs_each_schema(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    assert project.cli("migrate").exit_code == 0
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);  -- reviewed\n")
    with caplog.at_level(logging.INFO, logger="mtm.repair"):
        result = mtm.repair(project.config, "0001_p", public=True)
    assert [c.schema for c in result.changes] == ["public"]
    records = [r for r in caplog.records if getattr(r, "event", None) == "repair.schema"]
    assert [(r.schema, r.migration) for r in records] == [("public", "0001_p")]  # type: ignore[attr-defined]
    rows = mtm.repairs(project.config, public=True)
    assert [(r.schema, r.migration) for r in rows] == [("public", "0001_p")]
    assert rows[0].old_checksum != rows[0].new_checksum
    assert mtm.validate(project.config).ok


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0009_nope", "--tenant", "acme"], "error: there is no tenant migration '0009_nope'"),
        (["0001_t1", "--tenant", "ghost"], "error: no tenant 'ghost' is registered"),
        (["0002_t2", "--tenant", "acme"], "error: nothing to repair: no chosen schema recorded"),
        (["0001_t1"], "error: choose exactly one of --tenant SCHEMA, --all-tenants or --public"),
        (["0001_t1", "--tenant", 'a"b'], "error: schema name 'a\"b' is not a plain"),
        ([], "error: name the migration to repair: mtm repair NAME (or --list)"),
        (["--list", "0001_t1"], "error: --list takes at most one --tenant or --public"),
    ],
)
def test_repair_refusals(project: Project, args: list[str], message: str) -> None:
    _fleet(project)
    before = project.query("SELECT * FROM public.mtm_migrations_state ORDER BY 1")
    r = project.cli("repair", *args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith(message) and r.output.count("\n") == 1, r.output
    assert _audit(project) == []
    assert project.query("SELECT * FROM public.mtm_migrations_state ORDER BY 1") == before


def test_repair_twice_is_refused_the_second_time(project: Project) -> None:
    _fleet(project)
    assert mtm.repair(project.config, "0001_t1", tenants=["acme"]).changes
    with pytest.raises(mtm.MtmError, match="nothing to repair"):
        mtm.repair(project.config, "0001_t1", tenants=["acme"])
    assert len(_audit(project)) == 1


@pytest.mark.slow
def test_repair_waits_for_a_migrate_holding_the_schema(project: Project) -> None:
    """A repair planned while a migrate is inside the schema waits for its lock; the
    ledger then moved (migrate recorded its step), so repair reads it again and repairs
    from it: both changes stand, one audit row, validate clean."""
    project.write("tenant", "0001_t1.sql", "CREATE TABLE t1 (id int);")
    assert project.cli("create", "acme").exit_code == 0
    old = _files(project)["0001_t1"]
    project.write(
        "tenant",
        "0002_gated.sql",
        f"SELECT pg_advisory_xact_lock({GATE});\nCREATE TABLE gated (id int);",
    )
    with gate(project) as g:
        run = spawn(project, "migrate")
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="migrate inside acme")
            project.write("tenant", "0001_t1.sql", EDITED)  # the reviewed edit, meanwhile
            fix = spawn(project, "repair", "0001_t1", "--tenant", "acme")
            wait_until(
                lambda: waiting_on_schema_locks(project) == 1,
                message="repair waiting for acme's lock",
            )
            assert _checksum(project, "acme", "0001_t1") == old  # it waits: nothing yet
            g.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            _, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
            out, err = fix.communicate(timeout=60)
        finally:
            for p in (run,):
                if p.poll() is None:
                    p.kill()
    assert fix.returncode == 0, err
    assert "repaired 1 schema" in out
    assert ledger(project, "acme") == ["0001_t1", "0002_gated"]
    assert project.scalar(
        "SELECT duration_ms IS NOT NULL FROM acme.mtm_migrations WHERE name = '0002_gated'"
    )  # migrate's row, which ran the step
    assert _audit(project) == [("acme", "0001_t1", old, _files(project)["0001_t1"])]
    assert mtm.validate(project.config).ok
