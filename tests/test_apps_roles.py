"""Tenant roles (mtm create --role): a tenant's role uses only its own schema."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import mtm
from conftest import Project, _libpq, make_project, skip_on_citus
from mtm.errors import TenantError, UsageError
from mtm.identifiers import tenant_role_name

ITEMS = "CREATE TABLE items (id serial PRIMARY KEY, label text);"


# Citus opens its connections to the workers as the current role: a NOLOGIN tenant role
# (SET ROLE to it) cannot reach its tables there (docs/citus.md, citusdata/citus#7719).
NOLOGIN_ON_WORKERS = "a NOLOGIN tenant role cannot query a distributed schema (Citus logs in as it)"


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
    skip_on_citus(p, NOLOGIN_ON_WORKERS)
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
    skip_on_citus(p, NOLOGIN_ON_WORKERS)
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


def test_drop_is_all_or_nothing_when_the_role_cannot_go(rproject: Project) -> None:
    p = rproject
    server_url = sa.make_url(p.url).set(database="postgres").render_as_string(False)
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


# --- login roles: the per-tenant boundary ------------------------------------------------


def _scram_matches(verifier: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier (what pg_authid stores) accepts ``password``:
    checked here, since the embedded test server trusts every login."""
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256"
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hashlib.sha256(client_key).digest() == base64.b64decode(stored_key)


def _verifier(project: Project, role: str) -> str:
    return str(project.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)))


def _password_from(output: str, role: str) -> str:
    match = re.search(rf"password of role {re.escape(role)} \(shown only now\): (\S+)", output)
    assert match, output
    return match.group(1)


def _checks_passwords(project: Project, role: str) -> bool:
    """Whether the server refuses a wrong password (the embedded one trusts everyone)."""
    try:
        psycopg.connect(_libpq(_login_url(project.url, role, "wrong")), connect_timeout=10).close()
    except psycopg.OperationalError:
        return True
    return False


def _refused(conn: sa.Connection, sql: str) -> None:
    with pytest.raises(sa.exc.DBAPIError) as info:
        conn.execute(sa.text(sql))
    assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege), sql
    conn.rollback()


def test_a_tenant_login_role_cannot_get_out(rproject: Project, tmp_path: Path) -> None:
    """acme's application logs in as acme's own role and tries every way out."""
    p = rproject
    r = p.cli("create", "acme", "--role", "--login", "--domain", "acme.example.com")
    assert r.exit_code == 0, r.output
    acme_role, globex_role = _role(p, "acme"), _role(p, "globex")
    password = _password_from(r.output, acme_role)
    assert r.output.count(password) == 1
    pw_file = tmp_path / "globex.pw"
    r = p.cli("create", "globex", "--role", "--login", "--password-file", str(pw_file))
    assert r.exit_code == 0, r.output
    assert f"written to {pw_file} (mode 0600)" in r.output
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    globex_password = pw_file.read_text().strip()
    assert globex_password not in r.output
    for t in ("acme", "globex"):
        p.query(f"INSERT INTO {t}.items (label) VALUES ('{t} row')")
    verifier = _verifier(p, acme_role)
    assert _scram_matches(verifier, password) and password not in verifier
    assert _scram_matches(_verifier(p, globex_role), globex_password)
    assert not _scram_matches(verifier, globex_password)

    engine = mtm.create_app_engine(_login_url(p.url, acme_role, password), pool_size=1)
    try:
        with engine.connect() as conn:  # unbound: its sessions start in its schema
            assert conn.execute(sa.text("SELECT current_user")).scalar() == acme_role
            assert _labels(conn) == ["acme row"]
            conn.rollback()
            for sql in (
                f'SET ROLE "{globex_role}"',
                "SET ROLE postgres",
                f'SET SESSION AUTHORIZATION "{globex_role}"',
                "SET SESSION AUTHORIZATION postgres",
                "SELECT * FROM globex.items",
                "INSERT INTO globex.items (label) VALUES ('intruder')",
                "UPDATE globex.items SET label = 'x'",
                "DELETE FROM globex.items",
                "TRUNCATE globex.items",
                "SELECT * FROM public.tenants",
                "SELECT * FROM public.tenants_domains",
                "DELETE FROM public.tenants",
                "SELECT * FROM globex.mtm_migrations",
                "DELETE FROM acme.mtm_migrations",
                "CREATE TABLE public.sneaky (id int)",
                "CREATE VIEW public.peek AS SELECT 1 AS x",
                "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                "CREATE TABLE acme.sneaky (id int)",
                "CREATE SCHEMA sneaky",
                f"ALTER ROLE \"{globex_role}\" PASSWORD 'taken'",
                f'GRANT "{globex_role}" TO "{acme_role}"',
            ):
                _refused(conn, sql)
            conn.execute(sa.text("RESET ROLE"))  # resets to... itself
            assert conn.execute(sa.text("SELECT current_user")).scalar() == acme_role
            _refused(conn, "SELECT * FROM globex.items")
            conn.execute(sa.text("SET search_path TO globex"))  # a schema it cannot use
            with pytest.raises(sa.exc.ProgrammingError, match='relation "items" does not'):
                conn.execute(sa.text("SELECT * FROM items"))
        with mtm.tenant_connection(engine, "acme") as conn:
            assert _labels(conn) == ["acme row"]
        with mtm.tenant_connection(engine, "globex") as conn:  # binding alone opens nothing
            _refused(conn, "SELECT * FROM globex.items")
            with pytest.raises(sa.exc.ProgrammingError, match='relation "items" does not'):
                _labels(conn)
    finally:
        engine.dispose()
    assert p.scalar("SELECT count(*) FROM globex.items") == 1
    assert "sneaky" not in p.schemas()
    if _checks_passwords(p, acme_role):  # a real login too, where the server checks
        psycopg.connect(_libpq(_login_url(p.url, globex_role, globex_password))).close()
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(_libpq(_login_url(p.url, globex_role, password)))


def _labels(conn: sa.Connection) -> list[str]:
    return list(conn.execute(sa.text("SELECT label FROM items ORDER BY id")).scalars())


def test_rotate_replaces_the_password(rproject: Project, tmp_path: Path) -> None:
    p = rproject
    r = p.cli("create", "acme", "--role", "--login")
    role = _role(p, "acme")
    first = _password_from(r.output, role)
    r = p.cli("role", "rotate", "acme")
    assert r.exit_code == 0, r.output
    second = _password_from(r.output, role)
    assert second != first
    assert _scram_matches(_verifier(p, role), second)
    assert not _scram_matches(_verifier(p, role), first)

    (tmp_path / "secrets").mkdir()
    pw_file = tmp_path / "secrets" / "acme.pw"
    pw_file.write_text("old\n")
    pw_file.chmod(0o644)
    r = p.cli("role", "rotate", "acme", "--password-file", str(pw_file))
    assert r.exit_code == 0, r.output
    third = pw_file.read_text().strip()
    assert third not in r.output and third not in (first, second, "old")
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    assert _scram_matches(_verifier(p, role), third)
    assert [x.name for x in pw_file.parent.iterdir()] == ["acme.pw"]  # no temp file left
    if _checks_passwords(p, role):
        psycopg.connect(_libpq(_login_url(p.url, role, third))).close()
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(_libpq(_login_url(p.url, role, second)))


def test_rotate_gives_a_nologin_role_a_login_only_when_asked(rproject: Project) -> None:
    p = rproject
    assert p.cli("create", "acme", "--role").exit_code == 0
    assert p.cli("create", "plain").exit_code == 0
    role = _role(p, "acme")
    for args, message in (
        (("acme",), f"error: role '{role}' of tenant 'acme' cannot log in; add --login"),
        (("plain",), "error: tenant 'plain' has no role made by mtm"),
        (("nobody",), "error: no tenant 'nobody' is registered"),
        (("Bad-Name",), "error: "),
    ):
        r = p.cli("role", "rotate", *args)
        assert r.exit_code != 0
        assert r.output.startswith(message) and r.output.count("\n") == 1, r.output
        assert "Traceback" not in r.output
    assert not p.scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,))
    r = p.cli("role", "rotate", "acme", "--login")
    assert r.exit_code == 0, r.output
    assert p.scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,))
    assert _scram_matches(_verifier(p, role), _password_from(r.output, role))


def test_login_options_refuse_bad_input_before_anything_changes(
    rproject: Project, tmp_path: Path
) -> None:
    p = rproject
    for args, message in (
        (("--login",), "error: --login makes the tenant's role able to log in: add --role"),
        (
            ("--role", "--password-file", str(tmp_path / "x.pw")),
            "error: --password-file is where the login role's password goes: add --login",
        ),
        (
            ("--role", "--login", "--password-file", str(tmp_path / "missing" / "x.pw")),
            f"error: --password-file {tmp_path / 'missing' / 'x.pw'}: folder "
            f"{tmp_path / 'missing'} does not exist",
        ),
    ):
        r = p.cli("create", "acme", *args)
        assert r.exit_code != 0
        assert r.output == message + "\n", r.output
    r = p.cli("role", "rotate", "acme", "--password-file", str(tmp_path))
    assert r.exit_code != 0 and "is a directory; name a file" in r.output
    assert "acme" not in p.schemas() and _roles(p) == set()
    assert not list(tmp_path.glob("*.pw"))


def test_passwords_never_reach_logs_or_the_server(
    rproject: Project, caplog: pytest.LogCaptureFixture
) -> None:
    p = rproject
    caplog.set_level(logging.DEBUG)
    created = mtm.create(p.config, "acme", role=True, login=True)
    rotated = mtm.rotate_role(p.config, "acme")
    secrets = [s for s in (created.password, rotated.password) if s]
    assert len(secrets) == 2 and created.role == rotated.role
    assert created.password not in repr(created) and rotated.password not in repr(rotated)
    secrets.append(_verifier(p, rotated.role))
    for record in caplog.records:
        text = repr(record.__dict__) + record.getMessage()
        assert not any(s in text for s in secrets), record
    assert any(getattr(r, "event", None) == "tenant.role.rotate" for r in caplog.records)
    # the server saw only the verifier: no statement it remembers holds the password
    seen = p.query("SELECT query FROM pg_stat_activity WHERE query <> ''")
    assert not any(s in q for (q,) in seen for s in secrets[:2])
    # a real process: the password printed once on stdout, never on stderr
    r = p.run("role", "rotate", "acme")
    assert r.returncode == 0, r.stderr
    new = _password_from(r.stdout, rotated.role)
    assert r.stdout.count(new) == 1 and new not in r.stderr


# --- the application role reads the registry ----------------------------------------------


def _app_role(project: Project) -> tuple[str, str]:
    """The shared application role of the docs' recipe: LOGIN, NOINHERIT, not a superuser."""
    login = f"{project.config.tenant_role_prefix}app"
    project.query(f"CREATE ROLE \"{login}\" LOGIN PASSWORD 'app-secret' NOINHERIT")
    config = project.root / "mtm.toml"
    config.write_text(config.read_text() + f'tenant_role_member = "{login}"\n')
    return login, "app-secret"


def test_the_application_role_resolves_hosts_and_cannot_write_the_registry(
    rproject: Project,
) -> None:
    p = rproject
    login, secret = _app_role(p)
    assert p.cli("create", "acme", "--role", "--domain", "acme.example.com").exit_code == 0
    engine = mtm.create_app_engine(_login_url(p.url, login, secret), pool_size=1)
    try:
        tenant = mtm.TenantResolver(engine).resolve("ACME.example.com:443")
        assert tenant is not None and tenant.schema == "acme"
        assert tenant.domains == ("acme.example.com",)
        found = mtm.MapperTable(engine).lookup("acme.example.com")
        assert found is not None and found.schema == "acme"
        assert mtm.TenantResolver(engine).resolve("nobody.example.com") is None
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_user")).scalar() == login
            for sql in (
                "INSERT INTO public.tenants (schema_name) VALUES ('evil')",
                "UPDATE public.tenants SET name = 'x'",
                "DELETE FROM public.tenants",
                "TRUNCATE public.tenants CASCADE",
                "INSERT INTO public.tenants_domains VALUES ('evil.example.com', 'acme')",
                "UPDATE public.tenants_domains SET schema_name = 'acme'",
                "DELETE FROM public.tenants_domains",
                "SELECT * FROM acme.items",  # unbound and NOINHERIT: no tenant
                "SELECT * FROM public.mtm_migrations",
                "CREATE TABLE public.sneaky (id int)",
            ):
                _refused(conn, sql)
    finally:
        engine.dispose()
    assert p.scalar("SELECT count(*) FROM public.tenants_domains") == 1


def test_registry_access_is_granted_to_a_member_set_later(rproject: Project) -> None:
    p = rproject
    assert p.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    login, secret = _app_role(p)
    assert p.cli("migrate").exit_code == 0  # bootstrapping again grants what is missing
    engine = mtm.create_app_engine(_login_url(p.url, login, secret), pool_size=1)
    try:
        assert mtm.MapperTable(engine).lookup("acme.example.com") is not None
    finally:
        engine.dispose()


def test_a_missing_member_role_is_one_clear_line(rproject: Project) -> None:
    p = rproject
    config = p.root / "mtm.toml"
    member = f"{p.config.tenant_role_prefix}ghost"
    config.write_text(config.read_text() + f'tenant_role_member = "{member}"\n')
    r = p.cli("migrate")
    assert r.exit_code != 0
    assert r.output.startswith(f"error: tenant_role_member '{member}' is not a role")
    assert r.output.count("\n") == 1


def test_the_shared_member_role_is_only_a_safety_net(rproject: Project) -> None:
    """What the docs say: a role that is a member of every tenant role (the shared
    ``tenant_role_member``) can switch from one tenant into another. Only per-tenant
    logins are a boundary."""
    p = rproject
    skip_on_citus(p, NOLOGIN_ON_WORKERS)
    login, secret = _app_role(p)
    for t in ("acme", "globex"):
        assert p.cli("create", t, "--role").exit_code == 0
        p.query(f"INSERT INTO {t}.items (label) VALUES ('{t} row')")
    engine = mtm.create_app_engine(_login_url(p.url, login, secret), pool_size=1)
    try:
        with mtm.tenant_connection(engine, "acme", role=_role(p, "acme")) as conn:
            _refused(conn, "SELECT * FROM globex.items")
            conn.execute(sa.text(f'SET ROLE "{_role(p, "globex")}"'))  # the hop succeeds
            rows = conn.execute(sa.text("SELECT label FROM globex.items")).scalars().all()
            assert rows == ["globex row"]
        with engine.connect() as conn:  # and the reset undid it
            assert conn.execute(sa.text("SELECT current_user")).scalar() == login
    finally:
        engine.dispose()


def test_kept_connection_creates_login_roles(rproject: Project, tmp_path: Path) -> None:
    """``mtm.connect(...).create`` takes the login options of ``mtm.create``."""
    p = rproject
    pw_file = tmp_path / "globex.pw"
    with mtm.connect(p.config) as db:
        acme = db.create("acme", role=True, login=True)
        globex = db.create("globex", role=True, login=True, password_file=pw_file)
        with pytest.raises(UsageError, match="add --role"):
            db.create("initech", login=True)
    assert acme.password is not None and acme.password_file is None
    assert acme.password not in repr(acme)
    assert globex.password is None and globex.password_file == pw_file
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    assert _scram_matches(_verifier(p, _role(p, "acme")), acme.password)
    assert _scram_matches(_verifier(p, _role(p, "globex")), pw_file.read_text().strip())
    assert "initech" not in p.schemas()
