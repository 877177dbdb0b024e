"""Checksums and order: validate names every disagreement; migrate refuses to start on one."""

from __future__ import annotations

import json

from _reliability import ledger
from conftest import Project


def _fleet(project: Project) -> None:
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id int);")
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    project.write("tenant", "0002_orders.sql", "CREATE TABLE orders (id int);")
    for schema in ("acme", "globex"):
        assert project.cli("create", schema).exit_code == 0
    assert project.cli("migrate").exit_code == 0


def _validate(project: Project) -> tuple[int, list[str]]:
    r = project.cli("validate", "--json")
    return r.exit_code, json.loads(r.output)["problems"]


def test_validate_clean_fleet(project: Project) -> None:
    _fleet(project)
    assert _validate(project) == (0, [])
    r = project.cli("validate")
    assert r.exit_code == 0
    assert "3 schemas checked: no problems" in r.output


def test_edited_migration_is_reported_and_migrate_refuses(project: Project) -> None:
    _fleet(project)
    project.write("tenant", "0002_orders.sql", "CREATE TABLE orders (id bigint);")
    project.write("tenant", "0003_new.sql", "CREATE TABLE new (id int);")
    code, problems = _validate(project)
    assert code == 1
    assert len(problems) == 2
    for schema in ("acme", "globex"):
        assert any(
            p.startswith(f"{schema}: migration 0002_orders was edited after it was applied")
            and "0002_orders.sql" in p
            for p in problems
        ), problems

    r = project.cli("migrate")
    assert r.exit_code == 2
    assert "refusing to migrate" in r.output
    assert "acme: migration 0002_orders was edited" in r.output
    assert "0002_orders.sql" in r.output
    for schema in ("acme", "globex"):  # refused before anything ran
        assert ledger(project, schema) == ["0001_items", "0002_orders"]
    assert project.scalar("SELECT to_regclass('acme.new')") is None


def test_edited_public_migration(project: Project) -> None:
    _fleet(project)
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id int, name text);")
    code, problems = _validate(project)
    assert code == 1
    assert problems == [problems[0]] and problems[0].startswith(
        "public: migration 0001_plans was edited"
    )
    r = project.cli("migrate")
    assert r.exit_code == 2 and "public: migration 0001_plans was edited" in r.output


def test_applied_migration_whose_file_is_gone(project: Project) -> None:
    _fleet(project)
    (project.migrations / "tenant" / "0002_orders.sql").unlink()
    code, problems = _validate(project)
    assert code == 1
    assert sorted(problems) == [
        "acme: applied migration 0002_orders has no file",
        "globex: applied migration 0002_orders has no file",
    ]
    r = project.cli("migrate")
    assert r.exit_code == 2 and "applied migration 0002_orders has no file" in r.output


def test_registry_row_without_schema(project: Project) -> None:
    _fleet(project)
    project.query("DROP SCHEMA globex CASCADE")  # by hand, behind mtm's back
    code, problems = _validate(project)
    assert code == 1
    assert "globex: registered tenant has no schema" in problems


def test_schema_with_ledger_but_no_registry_row(project: Project) -> None:
    _fleet(project)
    project.query("DELETE FROM public.tenants WHERE schema_name = 'globex'")
    code, problems = _validate(project)
    assert code == 1
    assert problems == ["globex: schema has a ledger but no registry row"]


def test_state_summary_that_disagrees_with_a_ledger(project: Project) -> None:
    _fleet(project)
    project.query("DELETE FROM acme.mtm_migrations WHERE name = '0002_orders'")
    code, problems = _validate(project)
    assert code == 1
    assert "acme: state summary disagrees with the ledger (run 'mtm migrate' to rewrite it)" in (
        problems
    )
    project.query("DELETE FROM public.mtm_migrations_state WHERE schema_name = 'globex'")
    code, problems = _validate(project)
    assert "globex: ledger has no state summary" in problems
    project.query(
        "INSERT INTO public.mtm_migrations_state (schema_name, namespace, applied, fingerprint) "
        "VALUES ('ghost', 'tenant', 1, 'x')"
    )
    code, problems = _validate(project)
    assert "ghost: state summary of a schema that is not registered" in problems


def test_migrate_trusts_the_ledger_not_the_summary(project: Project) -> None:
    """A summary that lies (says head) does not make migrate skip the schema's real state."""
    _fleet(project)
    project.query("DELETE FROM acme.mtm_migrations WHERE name = '0002_orders'")
    project.query("DROP TABLE acme.orders")
    project.write("tenant", "0003_new.sql", "CREATE TABLE new (id int);")
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert ledger(project, "acme") == ["0001_items", "0002_orders", "0003_new"]
    assert project.scalar("SELECT to_regclass('acme.orders') IS NOT NULL")
    assert _validate(project) == (0, [])


def test_out_of_order_migration_is_refused_then_allowed(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    project.write("tenant", "0003_orders.sql", "CREATE TABLE orders (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write("tenant", "0002_late.sql", "CREATE TABLE late (id int);")

    r = project.cli("migrate")
    assert r.exit_code == 2
    assert (
        "acme: migration 0002_late sorts before 0003_orders, which is already applied "
        "(use --allow-out-of-order to apply it anyway)"
    ) in r.output
    assert ledger(project, "acme") == ["0001_items", "0003_orders"]
    code, problems = _validate(project)
    assert code == 1 and any("0002_late sorts before 0003_orders" in p for p in problems)

    r = project.cli("migrate", "--allow-out-of-order")
    assert r.exit_code == 0, r.output
    assert ledger(project, "acme") == ["0001_items", "0002_late", "0003_orders"]
    assert project.scalar("SELECT to_regclass('acme.late') IS NOT NULL")
    assert _validate(project) == (0, [])


def test_out_of_order_in_the_public_schema(project: Project) -> None:
    project.write("public", "0002_b.sql", "CREATE TABLE b (id int);")
    assert project.cli("migrate").exit_code == 0
    project.write("public", "0001_a.sql", "CREATE TABLE a (id int);")
    r = project.cli("migrate")
    assert r.exit_code == 2 and "public: migration 0001_a sorts before 0002_b" in r.output
    assert project.cli("migrate", "--allow-out-of-order").exit_code == 0
    assert ledger(project, "public") == ["0001_a", "0002_b"]
