"""mtm rename: schema, registry row, domains, state row and role in one transaction."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import mtm
from _reliability import run_lock_pids, spawn, wait_until, waiting_on_gate
from conftest import Project, _libpq
from mtm.commands import lifecycle
from mtm.errors import MtmError
from test_apps_roles import _login_url, rproject  # noqa: F401  (a fixture)

ITEMS = "CREATE TABLE items (id serial PRIMARY KEY, label text);"
GATE = 4343


def _ok(project: Project, *args: str) -> str:
    result = project.cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def _role(project: Project, schema: str) -> str:
    return mtm.tenant_role(project.config, schema)


def _state(project: Project) -> list[Any]:
    """Everything a rename touches, to compare before and after a refusal or failure."""
    return [
        project.query("SELECT schema_name, name, updated_at FROM public.tenants ORDER BY 1"),
        project.query("SELECT * FROM public.tenants_domains ORDER BY domain"),
        project.query("SELECT * FROM public.mtm_migrations_state ORDER BY schema_name"),
        project.query("SELECT schema_name, migration FROM public.mtm_migrations_repairs"),
        sorted(project.schemas()),
        project.query(
            "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
            "WHERE starts_with(rolname, %s) ORDER BY 1",
            (project.config.tenant_role_prefix,),
        ),
    ]


def test_rename_moves_everything_and_keeps_data_grants_and_password(
    rproject: Project,  # noqa: F811
    tmp_path: Path,
) -> None:
    p = rproject
    secret = tmp_path / "pw"
    _ok(p, "create", "acme", "--domain", "acme.example.com", "--domain", "b.example.com")
    _ok(p, "create", "globex", "--domain", "globex.example.com")
    _ok(p, "role", "add", "acme", "--login", "--password-file", str(secret))
    p.query("INSERT INTO acme.items (label) VALUES ('kept')")
    p.query(
        "INSERT INTO public.mtm_migrations_repairs (schema_name, migration, new_checksum) "
        "VALUES ('acme', '0001_items', 'x')"
    )
    old_role = _role(p, "acme")

    out = _ok(p, "rename", "acme", "acme_corp")
    new_role = _role(p, "acme_corp")
    assert out.strip() == f"renamed tenant acme to acme_corp and role {old_role} to {new_role}"

    assert "acme" not in p.schemas() and "acme_corp" in p.schemas()
    assert p.scalar("SELECT label FROM acme_corp.items") == "kept"
    assert [r[0] for r in p.query("SELECT name FROM acme_corp.mtm_migrations")] == ["0001_items"]
    assert p.query("SELECT schema_name FROM public.tenants ORDER BY 1") == [
        ("acme_corp",),
        ("globex",),
    ]
    assert p.query(
        "SELECT domain, is_primary FROM public.tenants_domains WHERE schema_name = 'acme_corp' "
        "ORDER BY domain"
    ) == [("acme.example.com", True), ("b.example.com", False)]
    assert p.query("SELECT schema_name, applied FROM public.mtm_migrations_state ORDER BY 1") == [
        ("acme_corp", 1),
        ("globex", 1),
    ]
    assert p.scalar("SELECT schema_name FROM public.mtm_migrations_repairs") == "acme_corp"
    database = p.scalar("SELECT current_database()")
    assert p.query(
        "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
        "WHERE rolname IN (%s, %s)",
        (old_role, new_role),
    ) == [(new_role, f"mtm tenant role: database {database} schema acme_corp")]

    # The role logs in with the same password, lands in the new schema, keeps its grants.
    engine = sa.create_engine(
        _login_url(p.url, new_role, secret.read_text().strip()).replace(
            "postgresql://", "postgresql+psycopg://"
        )
    )
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT label FROM items")).scalar() == "kept"
            conn.execute(sa.text("INSERT INTO items (label) VALUES ('after')"))
            conn.commit()
            with pytest.raises(sa.exc.ProgrammingError):
                conn.execute(sa.text("SELECT * FROM mtm_migrations"))
    finally:
        engine.dispose()

    assert _ok(p, "validate")
    listed = {t["schema"]: t for t in json.loads(_ok(p, "tenants", "--json"))}
    assert listed["acme_corp"]["role"] == new_role
    # the old name is free again, role included
    _ok(p, "create", "acme", "--role")
    # and the tenant can be dropped under its new name, role and all
    assert f"and role {new_role}" in _ok(p, "drop", "acme_corp", "--yes")


def test_a_running_asgi_app_finds_the_renamed_tenant_after_invalidate(project: Project) -> None:
    project.write("tenant", "0001_items.sql", ITEMS)
    _ok(project, "create", "acme", "--domain", "acme.example.com")
    engine = mtm.create_app_engine(project.url, pool_size=1)
    resolver = mtm.TenantResolver(engine, project.config, ttl=3600)
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["mtm.tenant"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    served = mtm.TenantMiddleware(app, resolver)

    async def request() -> str:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            pass

        scope = {"type": "http", "headers": [(b"host", b"acme.example.com")]}
        await served(scope, receive, send)
        tenant = seen[-1]
        with mtm.tenant_connection(engine, tenant) as conn:  # the app uses what it found
            conn.execute(sa.text("SELECT count(*) FROM items"))
        return str(tenant.schema)

    try:
        assert asyncio.run(request()) == "acme"
        mtm.rename(project.config, "acme", "acme_corp")
        # Until told, the app's cache still says acme: that schema is gone, so the
        # request fails rather than reaching anyone's data.
        with pytest.raises(sa.exc.ProgrammingError, match='relation "items" does not exist'):
            asyncio.run(request())
        resolver.invalidate(schema="acme")
        assert asyncio.run(request()) == "acme_corp"
    finally:
        engine.dispose()


def test_refusals_change_nothing(rproject: Project) -> None:  # noqa: F811
    p = rproject
    _ok(p, "create", "acme", "--role", "--domain", "acme.example.com")
    _ok(p, "create", "globex")
    p.query("CREATE SCHEMA loose")
    before = _state(p)
    taken_role = _role(p, "acme_new")
    p.query(f'CREATE ROLE "{taken_role}"')
    cases = {
        ("acme", "globex"): "error: tenant 'globex' already exists",
        ("acme", "loose"): "error: schema 'loose' already exists in the database",
        ("nobody", "x"): "error: no tenant 'nobody' is registered",
        ("acme", "select"): "error: schema name 'select'",
        ("acme", 'a"; DROP SCHEMA acme; --'): "error: schema name",
        ("acme", "acme"): "error: tenant 'acme' already has that name",
        ("acme", "acme_new"): (
            f"error: tenant 'acme' was not renamed: its role would become '{taken_role}', "
            "which already exists"
        ),
    }
    for (old, new), message in cases.items():
        result = p.cli("rename", old, new)
        assert result.exit_code == 2, (old, new, result.output)
        assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert _state(p)[:-1] == before[:-1]
    assert [r for r in _state(p)[-1] if r[0] != taken_role] == before[-1]


def test_a_failing_role_rename_leaves_everything_as_it_was(
    rproject: Project,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The role is renamed last, after the schema, registry and state rows: its failure
    (here a role taken between the check and the transaction) undoes them all."""
    p = rproject
    _ok(p, "create", "acme", "--role", "--domain", "acme.example.com")
    taken = _role(p, "acme_new")
    before = _state(p)
    p.query(f'CREATE ROLE "{taken}"')
    monkeypatch.setattr(lifecycle.roles, "role_exists", lambda conn, role: False)
    with pytest.raises(MtmError) as caught:
        mtm.rename(p.config, "acme", "acme_new")
    assert caught.value.message.startswith("tenant 'acme' was not renamed: ")
    assert caught.value.message.endswith("already exists (nothing was changed)")
    after = _state(p)
    assert after[:-1] == before[:-1]
    assert [r for r in after[-1] if r[0] != taken] == before[-1]
    assert run_lock_pids(p) == []  # the run lock went with the failure


@pytest.mark.slow
def test_rename_is_refused_while_a_migrate_holds_the_run_lock(project: Project) -> None:
    _ok(project, "create", "acme")
    project.write("public", "0001_gated.sql", f"SELECT pg_advisory_xact_lock({GATE});")
    before = _state(project)
    gate = psycopg.connect(_libpq(project.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    run = spawn(project, "migrate", "--lock-timeout", "60s")
    try:
        wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="migrate at the gate")
        refused = project.run("rename", "acme", "acme_corp")
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith(
            "error: tenant 'acme' was not renamed: another mtm run holds the migration lock: "
            f"mtm migrate pid={run.pid} host="
        )
        assert len(refused.stderr.splitlines()) == 1
        assert _state(project) == before
    finally:
        gate.close()
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    _ok(project, "rename", "acme", "acme_corp")  # once the run is over
