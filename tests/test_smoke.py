"""The shortest path through mtm, end to end on a real server."""

from __future__ import annotations

from conftest import Project


def test_create_migrate_status(project: Project) -> None:
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id int);")
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    r = project.cli("create", "acme", "--domain", "Acme.Example.com:8443")
    assert r.exit_code == 0, r.output
    assert "created tenant acme" in r.output
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert project.scalar("SELECT count(*) FROM acme.items") == 0
    assert project.scalar("SELECT to_regclass('public.plans') IS NOT NULL")
    r = project.cli("status", "--check")
    assert r.exit_code == 0, r.output
    assert "acme.example.com" in r.output
