"""``mtm tenants`` on a large fleet: the table shows a page and says how to see the rest;
``--all`` and ``--json`` show every tenant."""

from __future__ import annotations

import json

import psycopg

from conftest import Project, _libpq
from mtm import steps
from mtm.database import join_script
from mtm.migrations import discover
from mtm.tenantview import PAGE


def _fleet(project: Project, count: int) -> list[str]:
    """``count`` tenants at head, made by mtm's own create script in one round trip."""
    project.write("tenant", "0001_customers.sql", "CREATE TABLE customers (id int);")
    assert project.cli("migrate").exit_code == 0
    config = project.config
    migrations = discover(config.migrations_directory).tenant
    names = [f"t{i:03d}" for i in range(count)]
    script: list[str] = []
    for schema in names:
        body = [s for m in migrations for s in steps.create_body(config, schema, m)]
        script += steps.create(config, schema, None, []).around(body)
    with psycopg.connect(_libpq(project.url), autocommit=True) as conn:
        conn.execute(join_script(script).encode(), prepare=False)
    return names


def test_a_large_listing_shows_a_page_and_says_how_to_see_the_rest(project: Project) -> None:
    names = _fleet(project, PAGE + 3)
    r = project.cli("tenants")
    assert r.exit_code == 0, r.output
    shown = [n for n in names if f" {n} " in r.output]
    assert shown == names[:PAGE]
    assert r.output.rstrip().splitlines()[-1] == (
        f"... and 3 more tenants ({PAGE + 3} in all): "
        "--all lists every one, --json prints them all as JSON"
    )


def test_all_and_json_list_every_tenant(project: Project) -> None:
    names = _fleet(project, PAGE + 3)
    r = project.cli("tenants", "--all")
    assert r.exit_code == 0, r.output
    assert [n for n in names if f" {n} " in r.output] == names
    assert "more tenant" not in r.output
    listed = json.loads(project.cli("tenants", "--json").output)
    assert [t["schema"] for t in listed] == names


def test_a_listing_of_exactly_a_page_has_no_summary_line(project: Project) -> None:
    names = _fleet(project, PAGE)
    r = project.cli("tenants")
    assert [n for n in names if f" {n} " in r.output] == names
    assert "more tenant" not in r.output and "--all" not in r.output


def test_match_pages_the_matching_tenants_only(project: Project) -> None:
    _fleet(project, PAGE + 3)
    r = project.cli("tenants", "--match", "t00*")
    assert r.exit_code == 0, r.output
    assert "more tenant" not in r.output and " t009 " in r.output and " t010 " not in r.output


def test_a_page_is_the_first_tenants_by_name_with_their_states_and_the_count_of_all(
    project: Project,
) -> None:
    """``tenant_page`` (what ``mtm tenants`` shows without --all) gives the same rows as
    the full overview's first ones, read alone, and how many tenants there are."""
    from mtm import commands

    assert commands.tenant_page(project.config, 5) == ([], 0)  # no registry yet
    names = _fleet(project, 12)
    project.query(
        "INSERT INTO tenants_domains (schema_name, domain, is_primary) "
        "VALUES ('t001', 'one.example.com', true)"
    )
    page, total = commands.tenant_page(project.config, 5)
    assert total == 12
    assert page == commands.tenant_overview(project.config)[:5]
    assert [item.tenant.schema for item in page] == names[:5]
    assert page[1].tenant.primary_domain == "one.example.com" and page[1].applied == 1
    assert commands.tenant_page(project.config, 50)[0] == commands.tenant_overview(project.config)
