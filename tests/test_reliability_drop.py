"""`mtm drop` removes the tenant and only the tenant, and works for the users the docs
say may run it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

import mtm
from conftest import Project, _libpq, make_project
from mtm.errors import UsageError

ITEMS = """
CREATE TABLE items (id serial PRIMARY KEY, label text);
CREATE FUNCTION next_label() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
CREATE DOMAIN code AS text CHECK (VALUE <> '');
"""

# Everything a tenant's own migrations may make that depends on its own objects.
INSIDE = """
CREATE TYPE mood AS ENUM ('ok', 'meh');
CREATE TABLE parts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    item int REFERENCES items (id), m mood DEFAULT 'ok',
                    label text DEFAULT next_label());
CREATE INDEX parts_label ON parts (label);
CREATE VIEW item_parts AS SELECT i.id, p.label FROM items i JOIN parts p ON p.item = i.id;
CREATE MATERIALIZED VIEW counts AS SELECT count(*) AS n FROM item_parts;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER parts_touch BEFORE INSERT ON parts FOR EACH ROW EXECUTE FUNCTION touch();
ALTER TABLE parts ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON parts USING (label <> '');
CREATE TABLE items_2026 (LIKE items INCLUDING ALL);
CREATE SEQUENCE spare OWNED BY items.label;
"""


@pytest.fixture
def dproject(tmp_path: Path, database_url: str) -> Iterator[Project]:
    prefix = f"d{uuid.uuid4().hex[:8]}_"
    project = make_project(tmp_path / "app", database_url, f'tenant_role_prefix = "{prefix}"\n')
    project.write("tenant", "0001_items.sql", ITEMS)
    try:
        yield project
    finally:
        _drop_roles(database_url, prefix)


def _drop_roles(database_url: str, prefix: str) -> None:
    with psycopg.connect(_libpq(database_url), autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
        ).fetchall():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


OUTSIDE = """
CREATE VIEW public.report AS SELECT id, label FROM acme.items;
CREATE VIEW public.report_of_report AS SELECT * FROM public.report;
CREATE TABLE public.orders (id int, item int CONSTRAINT orders_item_fk REFERENCES acme.items (id));
CREATE TABLE public.notes (id int, label text DEFAULT acme.next_label());
CREATE TABLE public.labels (id int, c acme.code);
"""

NAMED = [
    "column c of table public.labels",
    "constraint orders_item_fk on table public.orders",
    "default value for column label of table public.notes",
    "view public.report",
    "view public.report_of_report",
]


def _objects_left(p: Project) -> dict[str, bool]:
    return {
        "schema": "acme" in p.schemas(),
        "registry": p.scalar("SELECT count(*) FROM public.tenants WHERE schema_name='acme'") == 1,
        "view": p.scalar("SELECT to_regclass('public.report') IS NOT NULL"),
        "fk": p.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'orders_item_fk'") == 1,
        "default": p.scalar(
            "SELECT count(*) FROM pg_attrdef WHERE adrelid = 'public.notes'::regclass"
        )
        == 1,
        "column": p.scalar(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.labels'::regclass "
            "AND attname = 'c' AND NOT attisdropped"
        )
        == 1,
    }


def test_drop_refuses_to_take_objects_outside_the_tenant(dproject: Project) -> None:
    p = dproject
    assert p.cli("create", "acme", "--role").exit_code == 0
    p.query(OUTSIDE)
    everything = dict.fromkeys(_objects_left(p), True)
    # A real process: exit 2, one line naming each object, nothing dropped.
    r = p.run("drop", "acme", "--yes")
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(
        "error: refusing to drop tenant 'acme': 5 object(s) outside schema 'acme' depend on "
        "it and would be dropped with it: "
    ), r.stderr
    assert "; ".join(NAMED) in r.stderr
    assert r.stderr.strip().endswith(
        "change them first, or pass --cascade-outside to drop them too (nothing was dropped)"
    )
    assert _objects_left(p) == everything
    assert mtm.tenant_role(p.config, "acme") in {
        r[0] for r in p.query("SELECT rolname FROM pg_roles")
    }
    # The Python API refuses the same way.
    with pytest.raises(UsageError, match=r"view public\.report_of_report"):
        mtm.drop(p.config, "acme", yes=True)
    assert _objects_left(p) == everything
    # Asked for, they go with it; the tables the foreign key and default were on stay.
    r = p.run("drop", "acme", "--yes", "--cascade-outside")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1] == "also dropped, outside schema acme: " + "; ".join(NAMED)
    assert _objects_left(p) == dict.fromkeys(everything, False)
    assert p.scalar("SELECT to_regclass('public.orders') IS NOT NULL")
    assert p.scalar("SELECT to_regclass('public.notes') IS NOT NULL")


def test_what_a_tenant_owns_inside_its_schema_never_stops_a_drop(dproject: Project) -> None:
    p = dproject
    p.write("tenant", "0002_inside.sql", INSIDE)
    assert p.cli("create", "acme", "--role").exit_code == 0
    assert p.cli("create", "globex").exit_code == 0
    # Another tenant's objects that point into acme are outside acme too.
    p.query("CREATE VIEW globex.acme_items AS SELECT * FROM acme.items")
    r = p.cli("drop", "acme", "--yes")
    assert r.exit_code == 2 and "view globex.acme_items" in r.output
    p.query("DROP VIEW globex.acme_items")
    r = p.cli("drop", "acme", "--yes")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("dropped tenant acme and role ") and "also dropped" not in r.output
    assert p.schemas() == {"globex"}


@pytest.fixture
def createrole_user(server_url: str, database_url: str) -> Iterator[str]:
    """A URL of the test database as a login role with CREATEROLE, not a superuser,
    that may create in the database and in public (what the docs ask for --role)."""
    user = f"mtm_cr_{uuid.uuid4().hex[:10]}"
    name = make_url(database_url).database
    with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD 'cr-pass'").format(
                sql.Identifier(user)
            )
        )
        admin.execute(
            sql.SQL("GRANT CREATE, CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(name), sql.Identifier(user)
            )
        )
    with psycopg.connect(_libpq(database_url), autocommit=True) as db:
        db.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(user)))
        assert db.execute(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s", (user,)
        ).fetchone() == (False, True)
    url = make_url(database_url).set(username=user, password="cr-pass")
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(database_url), autocommit=True) as db:
            db.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(user)))
        with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
            admin.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                    sql.Identifier(name), sql.Identifier(user)
                )
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))


def test_a_createrole_user_can_drop_the_role_tenants_it_made(
    tmp_path: Path, database_url: str, createrole_user: str
) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}_"
    p = make_project(tmp_path / "app", createrole_user, f'tenant_role_prefix = "{prefix}"\n')
    p.write("tenant", "0001_items.sql", ITEMS)
    try:
        for schema in ("acme", "globex"):
            r = p.run("create", schema, "--role")
            assert r.returncode == 0, r.stderr
        role = mtm.tenant_role(p.config, "acme")
        # Something the tenant role came to own, which REASSIGN OWNED must move.
        with psycopg.connect(_libpq(database_url), autocommit=True) as admin:
            admin.execute(f'GRANT CREATE ON SCHEMA acme TO "{role}"; SET ROLE "{role}"')
            admin.execute("CREATE TABLE acme.owned_by_role (id int)")
        r = p.run("drop", "acme", "--yes")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"dropped tenant acme and role {role}"
        assert p.scalar("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == 0
        assert p.schemas() == {"globex"}
        assert p.run("drop", "globex", "--yes").returncode == 0
        assert p.schemas() == set()
    finally:
        _drop_roles(database_url, prefix)
