"""mtm domains add / remove / list, the primary domain, and mtm tenants --match."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

import mtm
from _reliability import spawn, wait_until, waiting_on_gate, waiting_on_schema_locks
from conftest import Project, _libpq
from mtm.commands import domains as domains_command
from mtm.errors import TenantError
from test_hostile_input import BAD_DOMAINS

GATE = 4545


def _domains(project: Project, schema: str) -> list[tuple[str, bool]]:
    return [
        (r[0], r[1])
        for r in project.query(
            "SELECT domain, is_primary FROM public.tenants_domains WHERE schema_name = %s "
            "ORDER BY domain",
            (schema,),
        )
    ]


def _everything(project: Project) -> list[Any]:
    """The registry and the domains, to compare before and after a refusal."""
    return [
        project.query("SELECT schema_name, name, updated_at FROM public.tenants ORDER BY 1"),
        project.query("SELECT * FROM public.tenants_domains ORDER BY domain"),
    ]


def _ok(project: Project, *args: str) -> str:
    result = project.cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def _refused(project: Project, *args: str) -> str:
    """A refusal: exit 2, one line on stderr, no traceback."""
    result = project.cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_create_makes_the_first_domain_primary_and_tenant_exposes_it(project: Project) -> None:
    _ok(project, "create", "acme", "--domain", "Z.example.com", "--domain", "a.example.com")
    assert _domains(project, "acme") == [("a.example.com", False), ("z.example.com", True)]
    tenant = mtm.MapperTable(project.url, project.config).lookup("a.example.com:443")
    assert tenant is not None and tenant.primary_domain == "z.example.com"
    assert tenant.domains == ("a.example.com", "z.example.com")


def test_add_move_the_primary_remove_and_list(project: Project) -> None:
    _ok(project, "create", "acme")
    _ok(project, "create", "globex", "--domain", "globex.example.com")
    out = _ok(project, "domains", "add", "acme", "b.example.com", "A.Example.com.")
    assert "added 2 domains to tenant acme: b.example.com, a.example.com" in out
    assert "primary domain: b.example.com" in out  # the first named, as at create
    assert _domains(project, "acme") == [("a.example.com", False), ("b.example.com", True)]

    out = _ok(project, "domains", "add", "acme", "c.example.com", "a.example.com", "--primary")
    assert "added 1 domain to tenant acme: c.example.com" in out
    assert "already of tenant acme: a.example.com" in out
    assert "primary domain: c.example.com (was b.example.com)" in out
    # --primary with a domain the tenant already has only moves the primary.
    out = _ok(project, "domains", "add", "acme", "a.example.com", "--primary")
    assert "primary domain: a.example.com (was c.example.com)" in out
    assert not _ok(project, "domains", "add", "acme", "a.example.com", "--primary").count("added")

    listed = json.loads(_ok(project, "domains", "list", "acme", "--json"))
    assert [(d["domain"], d["primary"]) for d in listed] == [
        ("a.example.com", True),
        ("b.example.com", False),
        ("c.example.com", False),
    ]
    assert {d["schema"] for d in json.loads(_ok(project, "domains", "list", "--json"))} == {
        "acme",
        "globex",
    }
    assert "globex.example.com" in _ok(project, "domains", "list")

    # Removing the primary promotes the oldest remaining domain, then by name; it says so.
    out = _ok(project, "domains", "remove", "acme", "a.example.com")
    assert "removed 1 domain from tenant acme: a.example.com" in out
    assert "primary domain: b.example.com (was a.example.com)" in out
    out = _ok(project, "domains", "remove", "acme", "b.example.com", "c.example.com")
    assert "the tenant has no domain left, so no primary domain" in out
    assert _domains(project, "acme") == []
    assert mtm.MapperTable(project.url, project.config).get("acme").primary_domain is None  # type: ignore[union-attr]


def test_python_api_reports_what_changed(project: Project) -> None:
    config = project.config
    mtm.create(config, "acme", domains=["one.example.com"])
    added = mtm.domains_add(config, "acme", ["two.example.com"], primary=True)
    assert (added.added, added.primary, added.primary_before) == (
        ["two.example.com"],
        "two.example.com",
        "one.example.com",
    )
    removed = mtm.domains_remove(config, "acme", ["two.example.com"])
    assert (removed.removed, removed.primary) == (["two.example.com"], "one.example.com")
    assert [d.domain for d in mtm.domains_list(config, "acme")] == ["one.example.com"]


def test_refusals_name_the_owner_and_change_nothing(project: Project) -> None:
    _ok(project, "create", "acme", "--domain", "acme.example.com")
    _ok(project, "create", "globex", "--domain", "globex.example.com")
    before = _everything(project)
    cases = {
        ("domains", "add", "acme", "new.example.com", "GLOBEX.example.com"): (
            "error: domain 'globex.example.com' already belongs to tenant 'globex'"
        ),
        ("domains", "add", "nobody", "x.example.com"): "error: no tenant 'nobody' is registered",
        ("domains", "add", "acme", "http://x.example.com/"): "is not a host name",
        ("domains", "add", "acme", "a b.example.com"): "is not a valid host name",
        ("domains", "add", 'ac"me', "x.example.com"): "error: schema name",
        ("domains", "remove", "acme", "nowhere.example.com"): (
            "error: domain 'nowhere.example.com' is not registered"
        ),
        ("domains", "remove", "acme", "globex.example.com"): (
            "error: domain 'globex.example.com' belongs to tenant 'globex', not 'acme'"
        ),
        ("domains", "list", "nobody"): "error: no tenant 'nobody' is registered",
    }
    for args, message in cases.items():
        assert message in _refused(project, *args), args
    assert "Missing argument" in project.cli("domains", "add", "acme").output
    assert _everything(project) == before


def test_a_host_taken_between_the_check_and_the_insert(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The insert fails whole (the other new host and the primary move with it), and the
    message still names the owner."""
    _ok(project, "create", "acme", "--domain", "acme.example.com")
    _ok(project, "create", "globex", "--domain", "globex.example.com")
    before = _everything(project)
    real = domains_command.domains.owners
    calls = []

    def blind_first(*args: Any) -> dict[str, str]:
        calls.append(args)
        return {} if len(calls) == 1 else real(*args)  # the check misses the owner

    monkeypatch.setattr(domains_command.domains, "owners", blind_first)
    taken = re.escape("'globex.example.com' already belongs to tenant 'globex'")
    with pytest.raises(TenantError, match=taken):
        mtm.domains_add(
            project.config, "acme", ["new.example.com", "globex.example.com"], primary=True
        )
    assert len(calls) == 2
    assert _everything(project) == before


def test_a_tenant_dropped_between_the_check_and_the_change(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ok(project, "create", "acme", "--domain", "acme.example.com")
    real = domains_command.registered

    def then_dropped(conn: Any, config: Any, schema: Any) -> Any:
        tenant = real(conn, config, schema)
        _ok(project, "drop", "acme", "--yes")
        return tenant

    monkeypatch.setattr(domains_command, "registered", then_dropped)
    with pytest.raises(TenantError) as caught:
        mtm.domains_add(project.config, "acme", ["new.example.com"])
    assert caught.value.message == (
        "no domain was added to tenant 'acme': no tenant 'acme' is registered (nothing was changed)"
    )
    assert project.query("SELECT * FROM public.tenants_domains") == []


def test_tenants_match_shows_primary_domain_applied_step_and_role(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    project.write("tenant", "0002_more.sql", "CREATE TABLE more (id int);")
    _ok(project, "create", "acme", "--domain", "acme.example.com", "--domain", "a2.example.com")
    _ok(project, "create", "acorn", "--no-migrate")
    _ok(project, "create", "globex", "--domain", "globex.example.com")

    rows = json.loads(_ok(project, "tenants", "--match", "ac*", "--json"))
    assert [r["schema"] for r in rows] == ["acme", "acorn"]
    acme, acorn = rows
    assert acme["primary_domain"] == "acme.example.com"
    assert acme["domains"] == ["a2.example.com", "acme.example.com"]
    assert (acme["applied"], acme["last_migration"], acme["role"]) == (2, "0002_more", None)
    assert (acorn["applied"], acorn["last_migration"], acorn["primary_domain"]) == (0, None, None)

    table = _ok(project, "tenants", "--match", "a?me")
    assert "primary" in table and "0002_more" in table and "acorn" not in table
    assert json.loads(_ok(project, "tenants", "--match", "nothing*", "--json")) == []
    assert [t.schema for t in mtm.tenants(project.config, match="*x")] == ["globex"]
    assert [o.tenant.schema for o in mtm.tenant_overview(project.config, "g*")] == ["globex"]


def test_hostile_hosts_and_names_are_refused_by_every_lifecycle_command(project: Project) -> None:
    _ok(project, "create", "acme", "--domain", "acme.example.com")
    before = _everything(project)
    for host in BAD_DOMAINS:
        for command in ("add", "remove"):
            line = _refused(project, "domains", command, "acme", "--", host)
            assert line.startswith("error: domain "), (host, line)
    for name in ("x;y", "X", "x'y", 'x"y', "select", "pg_catalog", "a" * 64):
        for args in (
            ("domains", "add", name, "new.example.com"),
            ("domains", "list", name),
            ("rename", "acme", name),
            ("rename", name, "fine"),
            ("role", "add", name),
            ("role", "remove", name),
        ):
            assert _refused(project, *args).startswith("error: schema name"), args
    assert _everything(project) == before
    assert project.schemas() == {"acme"}


@pytest.mark.slow
def test_domains_add_waits_for_a_migrate_step_on_the_tenant(project: Project) -> None:
    """A domain change does not need the run lock: it waits for the step that holds the
    tenant's schema lock, then applies; the run is not disturbed."""
    _ok(project, "create", "acme", "--domain", "acme.example.com")
    project.write("tenant", "0001_gated.sql", f"SELECT pg_advisory_xact_lock({GATE});")
    gate = psycopg.connect(_libpq(project.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    run = spawn(project, "migrate", "--lock-timeout", "60s")
    try:
        wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="migrate at the gate")
        adding = spawn(project, "domains", "add", "acme", "new.example.com", "--primary")
        wait_until(lambda: waiting_on_schema_locks(project) == 1, message="domains add waiting")
        assert _domains(project, "acme") == [("acme.example.com", True)]
    finally:
        gate.close()
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    out, err = adding.communicate(timeout=60)
    assert adding.returncode == 0, err
    assert "primary domain: new.example.com (was acme.example.com)" in out
    assert _domains(project, "acme") == [("acme.example.com", False), ("new.example.com", True)]
