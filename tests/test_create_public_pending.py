"""``mtm create`` while public migrations are pending: a tenant migration may use a
public table, so the create applies them first under the run lock, or refuses (exit 2,
naming the lock's holder) and creates nothing."""

from __future__ import annotations

import psycopg

import mtm
from conftest import Project, _libpq
from mtm.locks import RUN_LOCK_CLASS, run_lock_key


def _plans_project(project: Project) -> None:
    project.write("public", "0001_plans.sql", "CREATE TABLE public.plans (id int PRIMARY KEY);")
    project.write(
        "tenant",
        "0001_subscriptions.sql",
        "CREATE TABLE subscriptions (plan_id int REFERENCES public.plans (id));",
    )


def test_create_applies_pending_public_migrations_first(project: Project) -> None:
    _plans_project(project)
    r = project.cli("create", "acme")
    assert r.exit_code == 0, r.output
    assert "applied 1 pending public migration first" in r.output
    assert "created tenant acme with 1 migration in" in r.output
    assert project.query("SELECT name FROM public.mtm_migrations") == [("0001_plans",)]
    assert project.scalar("SELECT to_regclass('acme.subscriptions') IS NOT NULL")
    # The public run is recorded like migrate's: status agrees, nothing left to do.
    assert project.cli("status", "--check").exit_code == 0
    # Once applied, later creates do not apply them again.
    second = mtm.create(project.config, "globex")
    assert second.public_applied == [] and second.applied == ["0001_subscriptions"]


def test_create_refuses_while_another_run_holds_the_lock(project: Project) -> None:
    _plans_project(project)
    with psycopg.connect(_libpq(project.url), autocommit=True) as holder:
        holder.execute("SELECT set_config('application_name', 'deploy-42', false)")
        holder.execute(
            "SELECT pg_advisory_lock(%s, %s)", (RUN_LOCK_CLASS, run_lock_key(project.config))
        )
        r = project.cli("create", "acme")
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert lines[0].startswith("error: tenant 'acme' was not created: public migrations are")
    assert "deploy-42 (backend pid" in lines[0]
    assert "Traceback" not in r.output
    assert "acme" not in project.schemas()
    assert project.query("SELECT schema_name FROM public.tenants") == []
    assert project.query("SELECT name FROM public.mtm_migrations") == []


def test_create_stops_when_a_public_migration_fails(project: Project) -> None:
    project.write(
        "public", "0001_broken.sql", "CREATE TABLE public.plans (id int PRIMARY KEY);\nSELECT 1/0;"
    )
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    r = project.cli("create", "acme")
    assert r.exit_code == 1
    assert "tenant 'acme' was not created: public migration 0001_broken failed" in r.output
    assert "division by zero" in r.output
    assert "acme" not in project.schemas()
    assert project.scalar("SELECT to_regclass('public.plans')") is None
