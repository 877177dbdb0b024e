"""Hostile and broken input: one clear message naming the culprit, a non-zero exit, and a
database left exactly as it was."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtm
from conftest import Project, _libpq
from mtm.errors import ConfigError, InvalidName, UsageError
from mtm.identifiers import (
    MAX_IDENTIFIER_BYTES,
    RESERVED_WORDS,
    normalize_host,
    quote_ident,
    quote_literal,
    validate_domain,
    validate_schema_name,
)
from mtm.resolver import MISSING


def _untouched(project: Project) -> None:
    """Nothing at all was created: no tenant schema, no registry, no ledger."""
    assert project.schemas() == set()
    assert project.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


BAD_SCHEMAS = [
    "Acme",
    "ACME",
    "acme;drop schema public cascade",
    'acme"; DROP TABLE x; --',
    "acme'",
    "ac me",
    " acme",
    "acme\n",
    "über",
    "ac-me",
    "1acme",
    "a" * 64,
    "é" * 32,
    "select",
    "user",
    "public",
    "information_schema",
    "pg_catalog",
    "pg_acme",
    "",
]


def test_create_refuses_hostile_schema_names(project: Project) -> None:
    for name in BAD_SCHEMAS:
        r = project.cli("create", name)
        assert r.exit_code == 2, (name, r.output)
        assert r.output.startswith("error: schema name"), (name, r.output)
        assert repr(name) in r.output or name == "", (name, r.output)
        assert r.output.count("\n") == 1  # one line
    _untouched(project)
    # The longest name PostgreSQL keeps is accepted, exactly as given.
    assert project.cli("create", "a" * MAX_IDENTIFIER_BYTES, "--no-migrate").exit_code == 0
    assert project.schemas() == {"a" * MAX_IDENTIFIER_BYTES}


def test_other_commands_refuse_hostile_schema_names(project: Project) -> None:
    for args in (
        ["migrate", "--tenant", "x;y"],
        ["status", "--tenant", "X"],
        ["history", "--tenant", "x'y"],
        ["down", "--tenant", 'x"y'],
    ):
        r = project.cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "schema name" in r.output
    r = project.cli("drop", "x;y", "--yes")
    assert r.exit_code == 2 and "no tenant 'x;y' is registered" in r.output
    assert project.schemas() == set()


BAD_DOMAINS = [
    "exa mple.com",
    "a..b.com",
    "-acme.com",
    "acme-.com",
    "acme_corp.com",
    "acme.com/path",
    "acme.com'; DROP TABLE tenants; --",
    "a" * 64 + ".com",
    ".".join(["abcdefghi"] * 26),  # 259 characters
    "",
    "   ",
    "[::1]",
    "acme.com\x00",
    "http://acme.com",
    "acme.com:http",
    "acme.com:80:80",
]


def test_create_refuses_hostile_domains(project: Project) -> None:
    for domain in BAD_DOMAINS:
        r = project.cli("create", "acme", "--domain", domain)
        assert r.exit_code == 2, (domain, r.output)
        assert r.output.startswith("error: domain"), (domain, r.output)
        assert r.output.count("\n") == 1
    _untouched(project)
    r = project.cli("create", "acme", "--domain", "Bücher.Example.COM.:8443")
    assert r.exit_code == 0, r.output
    assert (
        project.scalar("SELECT domain FROM public.tenants_domains") == "xn--bcher-kva.example.com"
    )


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ('jobs = "4"\n', "key 'jobs' must be an integer"),
        ("jobs = true\n", "key 'jobs' must be an integer"),
        ("jobs = 0\n", "jobs must be at least 1"),
        ("retries = -1\n", "retries must be 0 or more"),
        ('lock_timeout = "soon"\n', "lock_timeout 'soon' is not a PostgreSQL duration"),
        ('lock_timeout = "1s; DROP TABLE x"\n', "lock_timeout"),
        ('migrations_table = "Ledger-Table"\n', "migrations_table 'Ledger-Table'"),
        ('tenant_table = "t; drop"\n', "tenant_table"),
        ("[tenants\n", "not valid TOML"),
        ('database_url = "mysql://localhost/x"\n', "mtm needs a PostgreSQL URL"),
    ],
)
def test_broken_config_names_the_key(project: Project, text: str, culprit: str) -> None:
    config = project.root / "mtm.toml"
    config.write_text(text if text.startswith("database_url") else config.read_text() + text)
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    for args in (["migrate"], ["create", "acme"]):
        r = project.cli(*args)
        assert r.exit_code == 2, (text, r.output)
        assert culprit in r.output, (text, r.output)
        assert str(config) in r.output or "database_url" in r.output
    _untouched(project)


# --- migration files ---------------------------------------------------------------------


def _broken(project: Project, folder: str, name: str, content: str) -> Path:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    return project.write(folder, name, content)


@pytest.mark.parametrize(
    ("folder", "name", "content", "culprit"),
    [
        ("tenant", "0002_bad.py", "def up(op)\n    pass\n", "0002_bad.py:1: syntax error"),
        (
            "tenant",
            "0002_bad.py",
            "import not_a_module_anywhere\n\ndef up(op):\n    pass\n",
            "0002_bad.py:1: failed to import: ModuleNotFoundError",
        ),
        (
            "tenant",
            "0002_bad.py",
            "X = 1 / 0\n\ndef up(op):\n    pass\n",
            "0002_bad.py:1: failed to import: ZeroDivisionError",
        ),
        ("tenant", "0002_bad.py", "def down(op):\n    pass\n", "defines no up(op) function"),
        ("tenant", "0002_bad.sql", "-- only a comment\n", "the up script is empty"),
        ("tenant", "0002_bad.sql", "\ufeff;\n-- a BOM, then nothing\n", "the up script is empty"),
        (
            "tenant",
            "0002_bad.sql",
            "CREATE TABLE ok (id int);\nCREAT TABLE x (id int);",
            '0002_bad.sql:2: syntax error in the up script: syntax error at or near "CREAT"',
        ),
        (
            "tenant",
            "0002_bad.sql",
            "CREATE TABLE ok (id int);\n-- mtm:down\nDROP TABLE ok;\nDROP TABL x;",
            '0002_bad.sql:4: syntax error in the down script: syntax error at or near "TABL"',
        ),
        (
            "tenant",
            "0002_bad.sql",
            "CREATE TABLE t (begin int);\nCOMMIT;\nCREATE TABLE invoices (id int);",
            "0002_bad.sql:2: the up script contains 'COMMIT'",
        ),
        (
            "tenant",
            "0002_bad.sql",
            "INSERT INTO items VALUES (0);\nSELECT 'C:\\';\nCOMMIT;\nDROP TABLE items;",
            "0002_bad.sql:3: the up script contains 'COMMIT'",
        ),
        (
            "tenant",
            "0002_bad.sql",
            "CREATE TABLE t (id int);\nCOPY (SELECT 1) TO STDOUT;",
            "0002_bad.sql:2: the up script contains 'COPY (SELECT 1) TO STDOUT'",
        ),
        (
            "tenant",
            "0002_bad.sql",
            "VACUUM items;",
            "0002_bad.sql:1: the up script contains 'VACUUM items', which PostgreSQL cannot run",
        ),
        ("tenant", "0002_bad.yaml", "x: 1\n", "0002_bad.yaml: not a migration"),
        ("tenant", "0001_items.py", "def up(op):\n    pass\n", "two tenant migrations"),
        ("", "0002_loose.sql", "SELECT 1;", "0002_loose.sql: fits no namespace"),
        ("", "shared:0002_x.sql", "SELECT 1;", "fits no namespace"),
        ("tenants", "0002_typo.sql", "SELECT 1;", "folder fits no namespace"),
    ],
)
def test_broken_migration_files_stop_everything(
    project: Project, folder: str, name: str, content: str, culprit: str
) -> None:
    _broken(project, folder, name, content)
    for args in (["migrate"], ["create", "acme"]):
        r = project.cli(*args)
        assert r.exit_code == 2, (name, r.output)
        assert r.output.startswith("error: "), r.output
        assert culprit in r.output, (args, r.output)
    _untouched(project)


def test_non_utf8_sql_file(project: Project) -> None:
    project.migrations.joinpath("tenant").mkdir(parents=True, exist_ok=True)
    path = project.migrations / "tenant" / "0001_latin1.sql"
    path.write_bytes("SELECT 'café';".encode("latin-1"))
    r = project.cli("migrate")
    assert r.exit_code == 2 and f"{path}: not UTF-8 text" in r.output
    _untouched(project)


def test_failing_migrations_name_schema_and_file_and_change_nothing(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    before = project.query("SELECT * FROM public.mtm_migrations_state ORDER BY 1")

    project.write("tenant", "0002_typo.sql", "CREATE TABLE ok (id int);\nSELECT * FROM nothing;")
    r = project.cli("migrate")
    assert r.exit_code == 1
    assert 'FAILED acme: migration 0002_typo: relation "nothing" does not exist' in r.output

    (project.migrations / "tenant" / "0002_typo.sql").unlink()
    project.write(
        "tenant",
        "0002_raises.py",
        """
        def up(op):
            op.execute("CREATE TABLE ok (id int)")
            raise ValueError("no such customer")
        """,
    )
    r = project.cli("migrate")
    assert r.exit_code == 1
    assert (
        "FAILED acme: migration 0002_raises: ValueError: no such customer "
        "(at 0002_raises.py:3)" in r.output
    )
    assert project.query("SELECT * FROM public.mtm_migrations_state ORDER BY 1") == before
    assert project.schemas() == {"acme"}
    assert project.scalar("SELECT to_regclass('acme.ok')") is None
    assert [r[0] for r in project.query("SELECT name FROM acme.mtm_migrations")] == ["0001_items"]

    # A tenant created now is not created at all: no schema, no row.
    r = project.cli("create", "globex", "--domain", "globex.example.com")
    assert r.exit_code == 1
    assert "tenant 'globex' was not created: migration 0002_raises failed" in r.output
    assert "nothing was left behind" in r.output
    assert project.schemas() == {"acme"}
    assert project.scalar("SELECT count(*) FROM public.tenants_domains") == 0


# --- identifiers, fuzzed -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pg(server_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
        yield conn


def _pg_truncate(text: str) -> str:
    """What PostgreSQL keeps of an identifier: at most 63 bytes, whole characters."""
    raw = text.encode("utf-8")
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return text
    return raw[:MAX_IDENTIFIER_BYTES].decode("utf-8", errors="ignore")


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=80,
)
_NAMEISH = st.from_regex(r"[a-z_][a-z0-9_]{0,70}", fullmatch=True)
_FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(text=_TEXT)
def test_quote_ident_never_breaks_out(pg: psycopg.Connection, text: str) -> None:
    quoted = quote_ident(text)
    if text == "":
        return  # a zero-length identifier is an error in PostgreSQL, never an injection
    cur = pg.execute(f"SELECT 1 AS {quoted}, {quote_literal(text)} AS v".encode())
    assert cur.fetchall() == [(1, text)]
    assert cur.description is not None
    assert cur.description[0].name == _pg_truncate(text)


@_FUZZ
@given(name=st.one_of(_NAMEISH, _TEXT, st.sampled_from(sorted(RESERVED_WORDS))))
def test_valid_schema_names_are_real_identifiers(pg: psycopg.Connection, name: str) -> None:
    try:
        valid = validate_schema_name(name)
    except InvalidName:
        return
    assert valid == name
    assert len(name.encode()) <= MAX_IDENTIFIER_BYTES and name.isascii() and name == name.lower()
    with pg.transaction(force_rollback=True):
        # Quoted, and unquoted the way people write it by hand: the same schema.
        pg.execute(f"CREATE SCHEMA {quote_ident(name)}".encode())
        pg.execute(f"CREATE TABLE {name}.t (id int)".encode())
        assert pg.execute(f"SELECT count(*) FROM {name}.t".encode()).fetchone() == (0,)
        assert pg.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,)
        ).fetchone() == (1,)


def test_every_keyword_postgresql_reserves_is_refused(pg: psycopg.Connection) -> None:
    rows = pg.execute("SELECT word, catcode FROM pg_get_keywords()").fetchall()
    for word, catcode in rows:
        if catcode in ("R", "T"):  # reserved, and reserved-but-function/type names
            with pytest.raises(InvalidName):
                validate_schema_name(word)
        else:  # usable as a schema name without quotes
            validate_schema_name(word)
            with pg.transaction(force_rollback=True):
                pg.execute(f"CREATE SCHEMA {word}".encode())
                pg.execute(f"CREATE TABLE {word}.t (id int)".encode())
                pg.execute(f"SELECT * FROM {word}.t".encode())


@_FUZZ
@given(host=st.one_of(_TEXT, st.from_regex(r"[A-Za-z0-9.\-]{1,70}(:[0-9]{1,5})?", fullmatch=True)))
def test_domains_normalise_and_validate_safely(host: str) -> None:
    normalize_host(host)  # never raises on any text
    try:
        domain = validate_domain(host)
    except InvalidName:
        return
    assert domain.isascii() and domain == domain.lower()
    assert 0 < len(domain) <= 253
    assert all(0 < len(label) <= 63 for label in domain.split("."))
    assert not set(domain) - set("abcdefghijklmnopqrstuvwxyz0123456789-.")
    assert validate_domain(domain) == domain  # idempotent: stored form is its own form
    assert normalize_host(domain) == domain


def test_non_text_names_are_refused() -> None:
    for value in (None, 1, b"acme", ["acme"]):
        with pytest.raises(InvalidName):
            validate_schema_name(value)
        with pytest.raises(InvalidName):
            validate_domain(value)
    with pytest.raises(InvalidName):
        quote_ident("a\x00b")


# --- resolver, domains, ports, options, files, the mapper's arguments -------------------


def test_invalidate_wins_over_a_lookup_already_in_flight(project: Project) -> None:
    """A lookup that read the registry before invalidate() must not cache that answer."""
    assert project.cli("create", "acme", "--domain", "shop.example.com").exit_code == 0
    assert project.cli("create", "globex").exit_code == 0
    engine = mtm.create_app_engine(project.url)
    resolver = mtm.TenantResolver(engine, ttl=3600)
    read, release = threading.Event(), threading.Event()

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _hold(*_: Any) -> None:  # the registry was read: hold the answer there
        if threading.current_thread().name == "lookup":
            read.set()
            assert release.wait(30)

    answers: list[Any] = []
    lookup = threading.Thread(
        target=lambda: answers.append(resolver.resolve("shop.example.com")), name="lookup"
    )
    try:
        lookup.start()
        assert read.wait(30)
        project.query("UPDATE public.tenants_domains SET schema_name = 'globex'")
        resolver.invalidate()
        release.set()
        lookup.join(30)
        assert answers[0].schema == "acme"  # it returns what it read...
        assert resolver.cached("shop.example.com") is MISSING  # ...but does not keep it
        assert resolver.resolve("shop.example.com").schema == "globex"
        # Invalidating one host, or one schema, stops an in-flight lookup the same way.
        for forget in ({"host": "shop.example.com"}, {"schema": "globex"}):
            resolver.invalidate()
            read.clear()
            release.clear()
            lookup = threading.Thread(target=resolver.resolve, args=("shop.example.com",))
            lookup.name = "lookup"
            lookup.start()
            assert read.wait(30)
            resolver.invalidate(forget.get("host"), schema=forget.get("schema"))
            release.set()
            lookup.join(30)
            assert resolver.cached("shop.example.com") is MISSING, forget
    finally:
        release.set()
        engine.dispose()


def test_invalidate_wins_over_an_async_lookup_in_flight(project: Project) -> None:
    assert project.cli("create", "acme", "--domain", "shop.example.com").exit_code == 0
    engine = mtm.create_async_app_engine(project.url)
    resolver = mtm.AsyncTenantResolver(engine, ttl=3600)
    read, release = threading.Event(), threading.Event()

    @sa.event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _hold(*_: Any) -> None:  # blocks the event loop: the invalidation comes from a thread
        read.set()
        assert release.wait(30)

    def invalidate_while_held() -> None:
        assert read.wait(30)
        resolver.invalidate(schema="acme")
        release.set()

    async def main() -> Any:
        try:
            return await resolver.resolve("shop.example.com")
        finally:
            await engine.dispose()

    helper = threading.Thread(target=invalidate_while_held)
    helper.start()
    try:
        assert asyncio.run(main()).schema == "acme"
    finally:
        release.set()
        helper.join(30)
    assert resolver.cached("shop.example.com") is MISSING


def test_unicode_domains_follow_idna_2008_and_old_rows_still_resolve(project: Project) -> None:
    assert normalize_host("ß.example.com") == "xn--zca.example.com"  # IDNA 2003: ss
    assert normalize_host("Straße.example.com:443") == "xn--strae-oqa.example.com"
    r = project.cli("create", "acme", "--domain", "ß.example.com")
    assert r.exit_code == 0, r.output
    assert project.scalar("SELECT domain FROM public.tenants_domains") == "xn--zca.example.com"
    # A tenant whose domain an older mtm stored the IDNA 2003 way.
    assert project.cli("create", "globex", "--domain", "strasse.example.com").exit_code == 0
    engine = mtm.create_app_engine(project.url)
    try:
        resolver = mtm.TenantResolver(engine)
        mapper = mtm.MapperTable(engine)
        for lookup in (resolver.resolve, mapper.lookup):
            assert lookup("ß.example.com").schema == "acme"
            assert lookup("XN--ZCA.example.com").schema == "acme"
            assert lookup("straße.example.com").schema == "globex"  # found as strasse
            assert lookup("strasse.example.com").schema == "globex"
            assert lookup("ss.example.com") is None
        # Where both spellings are registered, the current one wins.
        r = project.cli("create", "initech", "--domain", "straße.example.com")
        assert r.exit_code == 0, r.output
        resolver.invalidate()
        for lookup in (resolver.resolve, mapper.lookup):
            assert lookup("straße.example.com").schema == "initech"
            assert lookup("strasse.example.com").schema == "globex"
    finally:
        engine.dispose()

    async def async_lookup() -> Any:
        async_engine = mtm.create_async_app_engine(project.url)
        try:
            return await mtm.AsyncTenantResolver(async_engine).resolve("ß.example.com")
        finally:
            await async_engine.dispose()

    assert asyncio.run(async_lookup()).schema == "acme"


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_ports_outside_1_to_65535_are_refused(project: Project, port: str) -> None:
    r = project.cli("create", "acme", "--domain", f"acme.example.com:{port}")
    assert r.exit_code == 2
    assert r.output == (
        f"error: domain 'acme.example.com:{port}' has port {port}; "
        "a port is a number from 1 to 65535\n"
    )
    _untouched(project)
    assert project.cli("create", "acme", "--domain", "acme.example.com:65535").exit_code == 0
    engine = mtm.create_app_engine(project.url)
    try:
        resolver = mtm.TenantResolver(engine)
        assert resolver.resolve("acme.example.com:65535").schema == "acme"
        for host in (f"acme.example.com:{port}", f"[::1]:{port}", "acme.example.com:\uff18\uff10"):
            assert resolver.resolve(host) is None, host
        # The middleware answers such a Host as it answers an unknown one.
        app = mtm.WSGITenantMiddleware(lambda env, start: [b"app"], resolver)
        statuses: list[str] = []
        body = app(
            {"HTTP_HOST": f"acme.example.com:{port}", "REQUEST_METHOD": "GET", "PATH_INFO": "/"},
            lambda status, headers, *_: statuses.append(status),
        )
        assert statuses[0].startswith("404") and b"app" not in b"".join(body)
    finally:
        engine.dispose()


@pytest.mark.parametrize("wait", ["nan", "inf", "-inf", "-1"])
def test_lock_wait_must_be_finite_and_not_negative(project: Project, wait: str) -> None:
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id int);")
    r = project.cli("migrate", "--lock-wait", wait)
    assert r.exit_code == 2
    assert r.output == (
        f"error: --lock-wait must be a number of seconds, 0 or more; got {float(wait)!r}\n"
    )
    _untouched(project)
    with pytest.raises(UsageError, match="--lock-wait must be"):
        mtm.migrate(project.config, lock_wait=float(wait))
    _untouched(project)


def test_a_byte_order_mark_in_a_sql_file_is_not_sql(project: Project) -> None:
    sql_text = "CREATE TABLE items (id int);\n-- mtm:down\nDROP TABLE items;\n"
    path = project.write("tenant", "0001_items.sql", "")
    path.write_bytes(codecs.BOM_UTF8 + sql_text.encode())
    plain = project.write(
        "tenant",
        "0002_plain.sql",
        "ALTER TABLE items ADD note text;\n-- mtm:down\nALTER TABLE items DROP note;\n",
    )
    assert project.cli("create", "acme").exit_code == 0
    assert project.scalar("SELECT to_regclass('acme.items') IS NOT NULL")
    checksums = dict(project.query("SELECT name, checksum FROM acme.mtm_migrations"))
    # The mark is not part of the checksum; a file without one keeps the checksum it
    # always had (SHA-256 of its bytes), so nothing applied before reads as edited.
    assert checksums["0001_items"] == hashlib.sha256(sql_text.encode()).hexdigest()
    assert checksums["0002_plain"] == hashlib.sha256(plain.read_bytes()).hexdigest()
    path.write_text(sql_text)  # an editor drops the mark: not an edit
    r = project.cli("validate")
    assert r.exit_code == 0, r.output
    path.write_bytes(codecs.BOM_UTF8 + sql_text.encode())
    assert project.cli("down", "--tenant", "acme", "--steps", "2").exit_code == 0
    assert project.scalar("SELECT to_regclass('acme.items') IS NULL")
    # A Python migration with a mark worked before and keeps its checksum of the bytes.
    py = project.write("tenant", "0003_py.py", "def up(op):\n    op.execute('SELECT 1')\n")
    py.write_bytes(codecs.BOM_UTF8 + py.read_bytes())
    assert project.cli("migrate").exit_code == 0
    assert (
        project.scalar("SELECT checksum FROM acme.mtm_migrations WHERE name = '0003_py'")
        == hashlib.sha256(py.read_bytes()).hexdigest()
    )


def test_mapper_table_takes_a_url_or_an_engine(project: Project) -> None:
    assert project.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    engine = mtm.create_app_engine(project.url)
    mappers = [
        mtm.MapperTable(project.url),  # as text, postgresql://...
        mtm.MapperTable(sa.make_url(project.url)),  # a SQLAlchemy URL
        mtm.MapperTable(engine, project.config),
    ]
    try:
        for mapper in mappers:
            assert mapper.lookup("ACME.example.com:443").schema == "acme"
            assert [t.schema for t in mapper.tenants()] == ["acme"]
    finally:
        for mapper in mappers:
            mapper.dispose()
        engine.dispose()
    with pytest.raises(ConfigError, match="mtm needs a PostgreSQL URL"):
        mtm.MapperTable("mysql://u@h/db")
    with pytest.raises(TypeError, match="needs an SQLAlchemy Engine or a database URL"):
        mtm.MapperTable(42)  # type: ignore[arg-type]
