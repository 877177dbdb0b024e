"""Hostile and broken input: one clear message naming the culprit, a non-zero exit, and a
database left exactly as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Project, _libpq
from mtm.errors import InvalidName
from mtm.identifiers import (
    MAX_IDENTIFIER_BYTES,
    RESERVED_WORDS,
    normalize_host,
    quote_ident,
    quote_literal,
    validate_domain,
    validate_schema_name,
)


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
    assert r.exit_code == 1 and "no tenant 'x;y' is registered" in r.output
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
