"""Every command on a project adopted from the original tool (``.js`` history recorded
without checksums, a baseline in its place), and the cheap cross-command pairs on a
project that was never adopted."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from conftest import Project
from mtm import catalog
from test_adopt import (  # noqa: F401  (legacy is a fixture)
    catalog_of,
    ledger_rows,
    legacy,
    run,
)

NOTES = (
    "import sqlalchemy as sa\n\n\ndef up(op):\n"
    '    op.add_column("a", sa.Column("notes", sa.Text))\n'
)


@pytest.fixture
def adopted(legacy: Project) -> Project:  # noqa: F811
    """The legacy database adopted, and gamma created afterwards (from the baseline)."""
    r = run(legacy, "adopt")
    assert r.exit_code == 0, r.output
    r = run(legacy, "create", "gamma", "--domain", "gamma.example.com")
    assert r.exit_code == 0, r.output
    return legacy


def new_migration(project: Project, text: str = NOTES) -> Path:
    r = run(project, "new", "tenant", "add notes")
    assert r.exit_code == 0, r.output
    path = Path(project.root / r.output.strip())
    path.write_text(text, encoding="utf-8")
    return path


def same_as(project: Project, a: str, b: str) -> None:
    assert catalog.compare(catalog_of(project, a), catalog_of(project, b)) == []
    assert [(n, c) for n, c, _ in ledger_rows(project, a)] == [
        (n, c) for n, c, _ in ledger_rows(project, b)
    ]


def clean(project: Project) -> None:
    r = run(project, "validate")
    assert r.exit_code == 0, r.output
    r = run(project, "status", "--check")
    assert r.exit_code == 0, r.output
    r = run(project, "diff")
    assert r.exit_code == 0, r.output


# --- clone ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [False, True])
def test_clone_of_an_adopted_tenant_replays_the_baseline(adopted: Project, data: bool) -> None:
    """The .js rows are recorded as superseded and the baseline runs, as create does."""
    flag = ["--data"] if data else []
    for source, target in (("alpha", "alpha_copy"), ("gamma", "gamma_copy")):
        r = run(adopted, "clone", source, target, *flag)
        assert r.exit_code == 0, r.output
        same_as(adopted, source, target)
        assert ledger_rows(adopted, target)[0] == ("1546110701000-create-table-A", None, True)
    rows = adopted.scalar("SELECT count(*) FROM alpha_copy.a")
    assert rows == (2 if data else 0)
    clean(adopted)


def test_clone_of_an_adopted_tenant_after_a_new_migration(adopted: Project) -> None:
    new_migration(adopted)
    assert run(adopted, "migrate").exit_code == 0
    r = run(adopted, "clone", "beta", "beta_copy", "--data")
    assert r.exit_code == 0, r.output
    same_as(adopted, "beta", "beta_copy")
    clean(adopted)


def test_clone_refuses_a_legacy_row_no_baseline_follows(adopted: Project) -> None:
    """A source whose ledger holds .js history but not the baseline cannot be rebuilt."""
    [baseline] = [n for n, c, _ in ledger_rows(adopted, "alpha") if c is not None]
    adopted.query(f"DELETE FROM alpha.migrations WHERE name = '{baseline}'")
    r = run(adopted, "clone", "alpha", "alpha_copy")
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [
        "error: tenant 'alpha' cannot be cloned: alpha: tenant:1546110701000-create-table-A.js "
        "is a migration of the original tool, which mtm never runs (adopt the database with "
        "'mtm adopt', or rewrite it as .py or .sql)"
    ]
    assert "alpha_copy" not in adopted.schemas()


# --- diff ----------------------------------------------------------------------------------


def test_diff_of_an_adopted_project(adopted: Project) -> None:
    r = run(adopted, "diff")
    assert r.exit_code == 0, r.output
    new_migration(adopted)
    assert run(adopted, "migrate").exit_code == 0
    r = run(adopted, "diff")
    assert r.exit_code == 0, r.output
    adopted.query("ALTER TABLE beta.b ADD COLUMN extra int")
    r = run(adopted, "diff")
    assert r.exit_code != 0, r.output
    assert "beta" in r.output and "extra" in r.output


# --- export / import -----------------------------------------------------------------------


def second_database(project: Project, server_url: str) -> tuple[Project, Project, str]:
    name = f"mtm_test_{uuid.uuid4().hex[:12]}"
    admin = Project(project.root, server_url)
    admin.query(f'CREATE DATABASE "{name}"')
    other = Project(project.root, make_url(server_url).set(database=name).render_as_string(False))
    return admin, other, name


@pytest.mark.parametrize("source", ["alpha", "gamma"])
def test_export_import_of_an_adopted_tenant(
    adopted: Project, server_url: str, tmp_path: Path, source: str
) -> None:
    """Into a fresh database that migrate built from the adopted project's files."""
    dump = tmp_path / f"{source}.mtm"
    r = run(adopted, "export", source, str(dump))
    assert r.exit_code == 0, r.output
    admin, fresh, name = second_database(adopted, server_url)
    try:
        assert run(fresh, "migrate").exit_code == 0
        r = run(fresh, "import", str(dump))
        assert r.exit_code == 0, r.output
        assert (
            catalog.compare(catalog_of(adopted, source), catalog_of(fresh, source, fresh.url)) == []
        )
        assert ledger_rows(fresh, source) == ledger_rows(adopted, source)
        clean(fresh)
        r = run(fresh, "clone", source, "copy")
        assert r.exit_code == 0, r.output
        clean(fresh)
    finally:
        admin.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    # and back into the adopted database, under another name
    r = run(adopted, "import", str(dump), "--as", "back", "--domain", "back.example.com")
    assert r.exit_code == 0, r.output
    same_as(adopted, source, "back")
    clean(adopted)


# --- create --existing, repair, stamp, rename ------------------------------------------------


def test_create_existing_with_a_baseline_in_an_adopted_project(adopted: Project) -> None:
    """A schema another tool left, at the adopted step: registered as it is."""
    adopted.query("CREATE SCHEMA delta")
    for statement in ("CREATE TABLE delta.a (LIKE gamma.a INCLUDING ALL)",):
        adopted.query(statement)
    [baseline] = [n for n, c, _ in ledger_rows(adopted, "gamma") if c is not None]
    r = run(adopted, "create", "delta", "--existing", "--baseline", baseline)
    assert r.exit_code == 0, r.output
    assert [(n, c) for n, c, _ in ledger_rows(adopted, "delta")] == [
        (n, c) for n, c, _ in ledger_rows(adopted, "gamma")
    ]
    r = run(adopted, "validate")
    assert r.exit_code == 0, r.output
    assert run(adopted, "status", "--check").exit_code == 0


def test_repair_stamp_and_rename_in_an_adopted_project(adopted: Project) -> None:
    before = ledger_rows(adopted, "alpha")
    for name, _, _ in before:
        r = run(adopted, "repair", name, "--all-tenants", "--yes")
        assert r.exit_code == 2, r.output  # nothing to repair
        assert ledger_rows(adopted, "alpha") == before, r.output
    assert run(adopted, "validate").exit_code == 0

    new_migration(adopted)
    r = run(adopted, "stamp", "head", "--tenant", "gamma")
    assert r.exit_code == 0, r.output
    assert [r[:2] for r in ledger_rows(adopted, "gamma")[:3]] == [
        r[:2] for r in ledger_rows(adopted, "alpha")
    ]
    r = run(adopted, "stamp", "head", "--tenant", "gamma", "--delete")
    assert r.exit_code == 0, r.output

    r = run(adopted, "rename", "alpha", "alpha2")
    assert r.exit_code == 0, r.output
    assert run(adopted, "migrate").exit_code == 0
    clean(adopted)
    r = run(adopted, "tenants", "--json")
    assert r.exit_code == 0, r.output
    listed = {t["schema"]: t for t in json.loads(r.output)}
    assert sorted(listed) == ["alpha2", "beta", "gamma"]
    assert listed["alpha2"]["primary_domain"] == "alpha.example.com", listed["alpha2"]


def test_migrate_canary_in_an_adopted_project(adopted: Project) -> None:
    new_migration(adopted)
    r = run(adopted, "migrate", "--canary", "1")
    assert r.exit_code == 0, r.output
    r = run(adopted, "migrate")
    assert r.exit_code == 0, r.output
    clean(adopted)


# --- sql / lint ----------------------------------------------------------------------------


def test_sql_and_lint_skip_legacy_files(adopted: Project) -> None:
    """The .js files are history: shown as not rendered, never linted, never a crash."""
    new_migration(adopted)
    r = run(adopted, "sql", "--tenant", "alpha", "--pending")
    assert r.exit_code == 0, r.output
    assert "ADD COLUMN notes" in r.output and ".js" not in r.output
    r = run(adopted, "sql", "1546110701000-create-table-A")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[1:] == [
        "-- mtm: legacy, not rendered: a file of the original tool is never run"
    ]
    r = run(adopted, "sql", "--tenant", "gamma")
    assert r.exit_code == 0, r.output
    assert r.output.count("legacy, not rendered") == 2
    assert "CREATE TABLE a " in r.output  # the baseline in their place
    r = run(adopted, "lint")
    assert r.exit_code == 0, r.output
    assert "0 findings in 3 migrations checked" in r.output  # 2 baselines and the new one
    r = run(adopted, "lint", "1546110701000-create-table-A")
    assert r.exit_code == 2, r.output
    assert r.output == (
        "error: tenant:1546110701000-create-table-A: a file of the original tool (.js), "
        "history that is never run: nothing to lint (lint the baseline that stands in for it)\n"
    )


def test_stamp_of_an_empty_schema_records_the_history_as_create_does(adopted: Project) -> None:
    assert run(adopted, "create", "zeta", "--no-migrate").exit_code == 0
    r = run(adopted, "stamp", "head", "--tenant", "zeta")
    assert r.exit_code == 0, r.output
    assert [r[:2] for r in ledger_rows(adopted, "zeta")] == [
        r[:2] for r in ledger_rows(adopted, "gamma")
    ]
    assert run(adopted, "validate").exit_code == 0
    r = run(adopted, "diff")  # stamped, not built: diff says so
    assert r.exit_code == 1 and "differs: zeta" in r.output, r.output


# --- a project never adopted ----------------------------------------------------------------


@pytest.fixture
def plain(project: Project) -> Project:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id serial PRIMARY KEY, v text);")
    assert project.cli("migrate").exit_code == 0
    assert project.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    project.query("INSERT INTO acme.items (v) VALUES ('x'), ('y')")
    return project


def test_clone_of_a_renamed_tenant(plain: Project) -> None:
    assert plain.cli("rename", "acme", "acme2").exit_code == 0
    r = plain.cli("clone", "acme2", "copy", "--data")
    assert r.exit_code == 0, r.output
    assert plain.scalar("SELECT count(*) FROM copy.items") == 2


def test_export_of_a_clone_then_diff_and_domains_after_import(
    plain: Project, server_url: str, tmp_path: Path
) -> None:
    assert plain.cli("clone", "acme", "copy", "--data").exit_code == 0
    dump = tmp_path / "copy.mtm"
    r = plain.cli("export", "copy", str(dump))
    assert r.exit_code == 0, r.output
    r = plain.cli("import", str(dump), "--as", "copy2", "--domain", "copy2.example.com")
    assert r.exit_code == 0, r.output
    r = plain.cli("diff")
    assert r.exit_code == 0, r.output
    r = plain.cli("domains", "add", "copy2", "www.copy2.example.com")
    assert r.exit_code == 0, r.output
    r = plain.cli("domains", "list", "copy2")
    assert "www.copy2.example.com" in r.output
    assert plain.scalar("SELECT count(*) FROM copy2.items") == 2
