"""mtm role add / role remove: the role create --role makes, for a tenant that exists."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

import mtm
from _reliability import spawn, wait_until, waiting_on_gate, waiting_on_schema_locks
from conftest import Project, _libpq
from mtm.commands import lifecycle
from mtm.errors import MtmError
from test_apps_roles import _login_url, rproject  # noqa: F401  (a fixture)

GATE = 4444


def _ok(project: Project, *args: str) -> str:
    result = project.cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def _refused(project: Project, *args: str) -> str:
    result = project.cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _role(project: Project, schema: str) -> str:
    return mtm.tenant_role(project.config, schema)


def _roles(project: Project) -> list[tuple[str, str | None]]:
    return [
        (r[0], r[1])
        for r in project.query(
            "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
            "WHERE starts_with(rolname, %s) ORDER BY 1",
            (project.config.tenant_role_prefix,),
        )
    ]


def _privileges(project: Project, role: str) -> list[tuple[str, str]]:
    """Every table privilege and default privilege ``role`` holds in the database."""
    tables = project.query(
        "SELECT table_schema || '.' || table_name, string_agg(privilege_type, ',' ORDER BY "
        "privilege_type) FROM information_schema.role_table_grants WHERE grantee = %s "
        "GROUP BY 1 ORDER BY 1",
        (role,),
    )
    defaults = project.query(
        "SELECT 'default ' || n.nspname || ' ' || d.defaclobjtype::text, "
        "array_to_string(d.defaclacl, ',') FROM pg_default_acl d "
        "JOIN pg_namespace n ON n.oid = d.defaclnamespace "
        "WHERE array_to_string(d.defaclacl, ',') LIKE %s ORDER BY 1",
        (f"%{role}=%",),
    )
    return [(r[0], r[1]) for r in [*tables, *defaults]]


def test_role_add_equals_create_role_on_what_the_tenant_has(rproject: Project) -> None:  # noqa: F811
    p = rproject
    _ok(p, "create", "made", "--role")  # the reference: a role made at create
    _ok(p, "create", "later")
    p.query("INSERT INTO later.items (label) VALUES ('before the role')")
    out = _ok(p, "role", "add", "later")
    assert out.strip() == f"added role {_role(p, 'later')} to tenant later"

    def same_shape(role: str, schema: str) -> list[tuple[str, str]]:
        return [
            (name.replace(schema, "S"), acl.replace(role, "R"))
            for name, acl in _privileges(p, role)
        ]

    assert same_shape(_role(p, "later"), "later") == same_shape(_role(p, "made"), "made")
    assert ("later.items", "DELETE,INSERT,SELECT,UPDATE") in _privileges(p, _role(p, "later"))
    database = p.scalar("SELECT current_database()")
    assert (_role(p, "later"), f"mtm tenant role: database {database} schema later") in _roles(p)

    # It uses the existing table and its sequence, not the ledger; later tables too.
    p.write("tenant", "0002_notes.sql", "CREATE TABLE notes (id serial PRIMARY KEY);")
    _ok(p, "migrate")
    engine = mtm.create_app_engine(p.url, pool_size=1)
    try:
        with mtm.tenant_connection(engine, "later", role=_role(p, "later")) as conn:
            conn.execute(sa.text("INSERT INTO items (label) VALUES ('by the role')"))
            conn.execute(sa.text("INSERT INTO notes DEFAULT VALUES"))
            assert conn.execute(sa.text("SELECT count(*) FROM items")).scalar() == 2
            for sql in ("SELECT * FROM mtm_migrations", "SELECT * FROM made.items"):
                with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                    conn.execute(sa.text(sql))
                conn.rollback()
    finally:
        engine.dispose()
    assert _ok(p, "tenants", "--match", "later").count(_role(p, "later")[:8]) >= 1


def test_role_add_with_login_and_remove(rproject: Project) -> None:  # noqa: F811
    p = rproject
    _ok(p, "create", "acme")
    result = mtm.role_add(p.config, "acme", login=True)
    assert result.password and result.role == _role(p, "acme")
    url = _login_url(p.url, result.role, result.password)
    with psycopg.connect(_libpq(url)) as conn:
        assert conn.execute("SHOW search_path").fetchone()[0].startswith("acme")  # type: ignore[index]
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0  # type: ignore[index]

    out = _ok(p, "role", "remove", "acme")
    assert out.strip() == f"removed role {result.role} of tenant acme"
    assert _roles(p) == []
    assert _privileges(p, result.role) == []
    assert p.scalar("SELECT count(*) FROM pg_default_acl") == 0
    # the tenant itself is untouched, and can get its role again
    assert p.scalar("SELECT count(*) FROM acme.items") == 0
    _ok(p, "role", "add", "acme")


def test_refusals_change_nothing(rproject: Project) -> None:  # noqa: F811
    p = rproject
    _ok(p, "create", "acme", "--role")
    _ok(p, "create", "bare")
    _ok(p, "create", "alien")
    p.query(f'CREATE ROLE "{_role(p, "alien")}"')  # not made by mtm: no marker
    owner = _role(p, "owner")
    _ok(p, "create", "owner", "--role")
    p.query(f'ALTER TABLE owner.items OWNER TO "{owner}"')
    before = _roles(p)
    cases = {
        ("role", "add", "nobody"): "error: no tenant 'nobody' is registered",
        ("role", "add", "Bad-Name"): "error: schema name",
        ("role", "add", "acme"): f"error: tenant 'acme' already has its role '{_role(p, 'acme')}'",
        ("role", "add", "alien"): (
            f"error: role '{_role(p, 'alien')}' already exists and is not tenant 'alien''s"
        ),
        ("role", "add", "bare", "--password-file", "x"): "add --login",
        ("role", "remove", "nobody"): "error: no tenant 'nobody' is registered",
        ("role", "remove", "bare"): "error: tenant 'bare' has no role",
        ("role", "remove", "alien"): (
            f"error: role '{_role(p, 'alien')}' was not made by mtm for tenant 'alien'"
        ),
        ("role", "remove", "owner"): (
            f"error: role '{owner}' of tenant 'owner' was not removed: it owns 2 object(s) "
            "in this database: sequence owner.items_id_seq; table owner.items;"
        ),
    }
    for args, message in cases.items():
        assert message in _refused(p, *args), args
    assert _roles(p) == before
    assert (
        p.scalar(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items' AND schemaname = 'owner'"
        )
        == owner
    )


def test_a_failure_midway_leaves_no_role(
    rproject: Project,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The grants come after CREATE ROLE in the same transaction: one that fails takes
    the role with it."""
    p = rproject
    _ok(p, "create", "acme")
    real = lifecycle.roles.existing_grants_sql

    def failing(*args: str) -> list[str]:
        return [*real(*args), "GRANT SELECT ON TABLE acme.no_such_table TO CURRENT_USER"]

    monkeypatch.setattr(lifecycle.roles, "existing_grants_sql", failing)
    with pytest.raises(MtmError) as caught:
        mtm.role_add(p.config, "acme")
    assert caught.value.message == (
        "tenant 'acme' got no role: relation \"acme.no_such_table\" does not exist "
        "(nothing was changed)"
    )
    assert _roles(p) == []
    assert p.scalar("SELECT count(*) FROM pg_default_acl") == 0


@pytest.mark.slow
def test_role_add_waits_for_a_migrate_step_and_grants_what_it_made(
    rproject: Project,  # noqa: F811
) -> None:
    p = rproject
    _ok(p, "create", "acme")
    p.write(
        "tenant",
        "0002_gated.sql",
        f"SELECT pg_advisory_xact_lock({GATE}); CREATE TABLE gated (id int);",
    )
    gate = psycopg.connect(_libpq(p.url), autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    run = spawn(p, "migrate", "--lock-timeout", "60s")
    try:
        wait_until(lambda: waiting_on_gate(p, GATE) == 1, message="migrate at the gate")
        adder = spawn(p, "role", "add", "acme")
        wait_until(lambda: waiting_on_schema_locks(p) == 1, message="role add waiting")
        assert _roles(p) == []
    finally:
        gate.close()
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    _, err = adder.communicate(timeout=60)
    assert adder.returncode == 0, err
    assert ("acme.gated", "DELETE,INSERT,SELECT,UPDATE") in _privileges(p, _role(p, "acme"))
