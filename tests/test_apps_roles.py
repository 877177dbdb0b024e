"""Tenant roles (mtm create --role): a tenant's role uses only its own schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import mtm
from conftest import Project, _libpq, make_project
from mtm.errors import TenantError
from mtm.identifiers import tenant_role_name

ITEMS = "CREATE TABLE items (id serial PRIMARY KEY, label text);"


@pytest.fixture
def rproject(tmp_path: Path, database_url: str) -> Iterator[Project]:
    """A project whose tenant roles carry a prefix of their own (roles are cluster-wide
    and the test server is shared); every such role is dropped afterwards."""
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    project = make_project(tmp_path / "app", database_url, f'tenant_role_prefix = "{prefix}"\n')
    project.write("tenant", "0001_items.sql", ITEMS)
    try:
        yield project
    finally:
        with psycopg.connect(_libpq(database_url), autocommit=True) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
                )
            ]
            for name in names:
                quoted = psycopg.sql.Identifier(name)
                conn.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(quoted))
                conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(quoted))


def _login_url(url: str, user: str, password: str) -> str:
    """The test database's URL, logging in as ``user``."""
    return sa.make_url(url).set(username=user, password=password).render_as_string(False)


def _role(project: Project, schema: str) -> str:
    return mtm.tenant_role(project.config, schema)


def _roles(project: Project) -> set[str]:
    prefix = project.config.tenant_role_prefix
    return {
        r[0]
        for r in project.query(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
        )
    }


def test_role_uses_only_its_schema_including_later_tables(rproject: Project) -> None:
    p = rproject
    for t in ("alpha", "beta"):
        r = p.cli("create", t, "--role")
        assert r.exit_code == 0, r.output
        assert f"and role {_role(p, t)}" in r.output
        p.query(f"INSERT INTO {t}.items (label) VALUES ('{t} row')")
    assert _roles(p) == {_role(p, "alpha"), _role(p, "beta")}
    assert not p.scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (_role(p, "alpha"),))

    # a later migration, run as the owner, adds a table the role can use at once
    p.write(
        "tenant",
        "0002_notes.py",
        """
        import sqlalchemy as sa

        def up(op):
            op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("body", sa.Text))

        def down(op):
            op.drop_table("notes")
    """,
    )
    assert p.cli("migrate").exit_code == 0

    engine = mtm.create_app_engine(p.url, pool_size=1, max_overflow=0)
    try:
        with mtm.tenant_connection(engine, "alpha", role=_role(p, "alpha")) as conn:
            assert conn.execute(sa.text("SELECT current_user")).scalar() == _role(p, "alpha")
            conn.execute(sa.text("INSERT INTO items (label) VALUES ('mine')"))
            conn.execute(sa.text("UPDATE items SET label = label || '!'"))
            conn.execute(sa.text("INSERT INTO notes (id, body) VALUES (1, 'later table')"))
            conn.commit()
            labels = conn.execute(sa.text("SELECT label FROM items ORDER BY id")).scalars().all()
            assert labels == ["alpha row!", "mine!"]
            for sql in (
                "SELECT * FROM beta.items",
                "INSERT INTO beta.items (label) VALUES ('intruder')",
                "DELETE FROM beta.notes",
                "SELECT * FROM public.tenants",
                "DELETE FROM alpha.mtm_migrations",
                "CREATE TABLE alpha.sneaky (id int)",
                "DROP TABLE alpha.items",
            ):
                with pytest.raises(sa.exc.ProgrammingError) as info:
                    conn.execute(sa.text(sql))
                assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege), sql
                conn.rollback()
        # the role was reset: the owner (a superuser here) again, and no tenant path
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_user = session_user")).scalar()
            assert conn.execute(sa.text("SELECT count(*) FROM beta.items")).scalar() == 1
    finally:
        engine.dispose()
    assert p.scalar("SELECT count(*) FROM alpha.notes") == 1

    # drop takes the role with it, and only that one
    r = p.cli("drop", "alpha", "--yes")
    assert r.exit_code == 0, r.output
    assert f"and role {_role(p, 'alpha')}" in r.output
    assert _roles(p) == {_role(p, "beta")}


def test_a_login_member_cannot_switch_to_another_tenant(rproject: Project) -> None:
    """The real isolation setup: the app logs in as a non-superuser that inherits nothing
    and is a member of tenant roles (tenant_role_member), here of alpha's only."""
    p = rproject
    login = f"{p.config.tenant_role_prefix}app"
    p.query(f"CREATE ROLE \"{login}\" LOGIN PASSWORD 'app-secret' NOINHERIT")
    config = p.root / "mtm.toml"
    config.write_text(config.read_text() + f'tenant_role_member = "{login}"\n')
    assert p.cli("create", "alpha", "--role").exit_code == 0
    config.write_text(config.read_text().replace(f'tenant_role_member = "{login}"\n', ""))
    assert p.cli("create", "beta", "--role").exit_code == 0
    members = p.query(
        "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
        (login,),
    )
    assert members == [(_role(p, "alpha"),)]

    engine = mtm.create_app_engine(_login_url(p.url, login, "app-secret"), pool_size=1)
    try:
        with mtm.tenant_connection(engine, "alpha", role=_role(p, "alpha")) as conn:
            conn.execute(sa.text("INSERT INTO items (label) VALUES ('by the app')"))
            conn.commit()
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text("SELECT * FROM beta.items"))
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            with mtm.tenant_connection(engine, "beta", role=_role(p, "beta")):
                pass
        with engine.connect() as conn:  # unbound, the login role alone sees no tenant
            assert conn.execute(sa.text("SELECT current_user")).scalar() == login
            for t in ("alpha", "beta"):
                with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                    conn.execute(sa.text(f"SELECT * FROM {t}.items"))
                conn.rollback()
    finally:
        engine.dispose()
    assert p.scalar("SELECT label FROM alpha.items") == "by the app"


def test_drop_is_all_or_nothing_when_the_role_cannot_go(rproject: Project, server_url: str) -> None:
    p = rproject
    assert p.cli("create", "alpha", "--role").exit_code == 0
    role = _role(p, "alpha")
    other = f"{p.config.tenant_role_prefix}other"
    with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{other}"')
    other_url = sa.make_url(p.url).set(database=other).render_as_string(hide_password=False)
    try:
        with psycopg.connect(_libpq(other_url), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA shared; GRANT USAGE ON SCHEMA shared TO "{role}"')
        r = p.cli("drop", "alpha", "--yes")
        assert r.exit_code != 0
        assert "was not dropped" in r.output and role in r.output
        assert "alpha" in p.schemas() and role in _roles(p)
    finally:
        with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{other}" WITH (FORCE)')
    assert p.cli("drop", "alpha", "--yes").exit_code == 0
    assert _roles(p) == set()


def test_failed_create_leaves_no_role(rproject: Project) -> None:
    p = rproject
    p.write("tenant", "0002_broken.sql", "SELECT 1 / 0;")
    r = p.cli("create", "gamma", "--role")
    assert r.exit_code != 0
    assert _roles(p) == set()
    assert "gamma" not in p.schemas()


def test_existing_role_is_refused_before_anything_is_created(rproject: Project) -> None:
    p = rproject
    role = _role(p, "delta")
    p.query(f'CREATE ROLE "{role}"')  # as if another database of the server had made it
    with pytest.raises(TenantError, match="already exists"):
        mtm.create(p.config, "delta", role=True)
    assert "delta" not in p.schemas()
    # and drop never takes a role mtm did not make for this tenant
    mtm.create(p.config, "delta")
    assert mtm.drop(p.config, "delta", yes=True).role is None
    assert role in _roles(p)


def test_role_names_are_bounded_and_distinct() -> None:
    long_a = "a" * 60 + "xyz"
    long_b = "a" * 60 + "xyw"
    ra, rb = tenant_role_name(long_a), tenant_role_name(long_b)
    assert len(ra.encode()) <= 63 and len(rb.encode()) <= 63
    assert ra != rb and ra.startswith("mtm_tenant_aaaa")
    assert tenant_role_name("acme") == "mtm_tenant_acme"
    with pytest.raises(mtm.MtmError):
        tenant_role_name("acme", "Bad-Prefix")
