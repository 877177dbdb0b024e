"""SQL scripts read as PostgreSQL reads them: no database needed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtm import sqlscript
from mtm.sqlscript import ScriptSyntaxError, Statement, split, transaction_control


def _texts(sql: str) -> list[str]:
    return [s.text for s in split(sql)]


def _control(sql: str) -> str | None:
    found = transaction_control(split(sql))
    return found.text if found is not None else None


def test_statements_keep_their_source_text_and_line() -> None:
    sql = (
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t (id int, note text DEFAULT ';');  -- trailing\n"
        "/* block; comment */ INSERT INTO t VALUES (1, E'it\\'s; fine');\n"
        "\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\n"
        "BEGIN\n"
        "  RETURN 1; -- ; inside\n"
        "END;\n"
        "$body$;\n"
        ";;\n"
        "SELECT $$a;b$$, 'x' -- no semicolon at the end"
    )
    statements = split(sql)
    assert [s.kind for s in statements] == [
        "CreateStmt",
        "InsertStmt",
        "CreateFunctionStmt",
        "SelectStmt",
    ]
    assert [(s.line, s.text) for s in statements] == [
        (2, "CREATE TABLE t (id int, note text DEFAULT ';')"),
        (3, "INSERT INTO t VALUES (1, E'it\\'s; fine')"),
        (
            5,
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\n"
            "BEGIN\n  RETURN 1; -- ; inside\nEND;\n$body$",
        ),
        (11, "SELECT $$a;b$$, 'x' -- no semicolon at the end"),
    ]
    # Named in messages on one line, at most 60 characters.
    assert str(statements[2]) == "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body..."
    assert str(statements[1]) == "INSERT INTO t VALUES (1, E'it\\'s; fine')"


def test_comments_and_empty_statements_are_no_statements() -> None:
    assert split("") == []
    assert split("-- only a comment\n/* and another */\n;;  ;\n") == []


def test_offsets_count_characters_not_bytes() -> None:
    sql = "SELECT 'é€𝄞';\n/* ü */ SELECT 'ß'\n;\nCOMMIT"
    assert [(s.line, s.text) for s in split(sql)] == [
        (1, "SELECT 'é€𝄞'"),
        (2, "SELECT 'ß'"),
        (4, "COMMIT"),
    ]


def test_a_byte_order_mark_is_not_sql() -> None:
    assert sqlscript.strip_bom("\ufeffSELECT 1") == "SELECT 1"
    assert sqlscript.strip_bom("SELECT '\ufeff'") == "SELECT '\ufeff'"
    assert _texts("\ufeffCREATE TABLE t (id int);\nSELECT 1;") == [
        "CREATE TABLE t (id int)",
        "SELECT 1",
    ]


@pytest.mark.parametrize(
    ("sql", "line", "message"),
    [
        ("SELECT 1;\n\nCREAT TABLE t (id int);", 3, 'syntax error at or near "CREAT"'),
        ("SELECT 'é€𝄞';\nSELEC 2;", 2, 'syntax error at or near "SELEC"'),
        ("SELECT 1;\nSELECT (\n", 3, "syntax error at end of input"),
        ("SELECT 1;\nSELECT 'never\nclosed;\n", 2, "unterminated quoted string"),
        ("DO $$\nBEGIN\nEND $;", 1, "unterminated dollar-quoted string"),
        ("\ufeffSELECT 1;\nSELEC 2;", 2, 'syntax error at or near "SELEC"'),
        ("SELECT '" + "é" * 20 + "' x y;\nSELECT 1;\n", 1, 'syntax error at or near "y"'),
    ],
)
def test_syntax_errors_say_where(sql: str, line: int, message: str) -> None:
    with pytest.raises(ScriptSyntaxError) as caught:
        split(sql)
    assert caught.value.line == line
    assert message in caught.value.message


# --- transaction control ---------------------------------------------------------------


def test_a_column_named_begin_does_not_hide_a_commit() -> None:
    sql = "CREATE TABLE t (begin int, commit int);\nCOMMIT;\nCREATE TABLE invoices (id int);"
    found = transaction_control(split(sql))
    assert found is not None and (found.line, found.text) == (2, "COMMIT")


def test_a_string_ending_in_a_backslash_does_not_hide_a_commit() -> None:
    sql = "INSERT INTO paths VALUES ('C:\\');\nCOMMIT;\nCREATE TABLE invoices (id int);"
    assert _texts(sql)[1] == "COMMIT"
    assert _control(sql) == "COMMIT"


@pytest.mark.parametrize(
    "statement",
    [
        "BEGIN",
        "begin work",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "START TRANSACTION",
        "COMMIT",
        "commit and chain",
        "END",
        "END TRANSACTION",
        "ROLLBACK",
        "ABORT",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "RELEASE SAVEPOINT made_elsewhere",
        "ROLLBACK TO SAVEPOINT made_elsewhere",
        "ROLLBACK TO made_elsewhere",
        "/* hidden; */ COMMIT",
        "-- a comment\nCOMMIT",
    ],
)
def test_transaction_control_is_found(statement: str) -> None:
    assert _control(f"CREATE TABLE a (id int);\n{statement};\nCREATE TABLE b (id int);") == (
        statement.splitlines()[-1].replace("/* hidden; */ ", "")
    )


@pytest.mark.parametrize(
    "sql",
    [
        "DO $$ BEGIN COMMIT; END $$",  # PostgreSQL refuses it inside a transaction block
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$",
        "CREATE FUNCTION one() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
        "SELECT 'COMMIT', $$ROLLBACK$$, E'\\';COMMIT;'",
        'CREATE TABLE t ("commit" int, "end" int, begin int)',
        "SAVEPOINT a; ROLLBACK TO SAVEPOINT a; RELEASE SAVEPOINT a",
        "SAVEPOINT a; SAVEPOINT b; ROLLBACK TO a; RELEASE a",
        "SAVEPOINT a; SAVEPOINT a; RELEASE a; RELEASE a",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ],
)
def test_what_cannot_end_the_transaction_is_accepted(sql: str) -> None:
    assert _control(sql) is None


@pytest.mark.parametrize(
    ("sql", "culprit"),
    [
        ("SAVEPOINT a; RELEASE a; ROLLBACK TO a", "ROLLBACK TO a"),
        ("SAVEPOINT a; SAVEPOINT b; ROLLBACK TO a; RELEASE b", "RELEASE b"),
        ("SAVEPOINT a; SAVEPOINT b; RELEASE a; ROLLBACK TO b", "ROLLBACK TO b"),
        ("SAVEPOINT a; RELEASE a; RELEASE a", "RELEASE a"),
    ],
)
def test_savepoints_may_not_reach_outside_the_script(sql: str, culprit: str) -> None:
    assert _control(sql) == culprit


# --- statements that need no transaction, and COPY -------------------------------------


@pytest.mark.parametrize(
    ("sql", "outside"),
    [
        ("CREATE INDEX CONCURRENTLY i ON t (x)", True),
        ("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x)", True),
        ("CREATE INDEX i ON t (x)", False),
        ("DROP INDEX CONCURRENTLY IF EXISTS i", True),
        ("DROP INDEX i", False),
        ("REINDEX TABLE CONCURRENTLY t", True),
        ("REINDEX (CONCURRENTLY) INDEX i", True),
        ("REINDEX TABLE t", False),
        ("REINDEX SCHEMA acme", True),
        ("REINDEX DATABASE d", True),
        ("VACUUM t", True),
        ("VACUUM (ANALYZE) t", True),
        ("ANALYZE t", False),
        ("CLUSTER", True),
        ("CLUSTER t USING i", False),
        ("DISCARD ALL", True),
        ("DISCARD TEMP", False),
        ("CREATE DATABASE d", True),
        ("DROP DATABASE IF EXISTS d", True),
        ("ALTER DATABASE d SET TABLESPACE ts", True),
        ("ALTER DATABASE d SET work_mem = '1MB'", False),
        ("CREATE TABLESPACE ts LOCATION '/x'", True),
        ("DROP TABLESPACE ts", True),
        ("ALTER SYSTEM SET work_mem = '1MB'", True),
        ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY", True),
        ("ALTER TABLE p DETACH PARTITION c", False),
        ("CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p", True),
        ("CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p WITH (connect = false)", False),
        ("ALTER TYPE mood ADD VALUE 'meh'", False),
        ("CREATE TABLE t (id int)", False),
    ],
)
def test_statements_that_cannot_run_in_a_transaction(sql: str, outside: bool) -> None:
    (statement,) = split(sql)
    assert sqlscript.needs_no_transaction(statement) is outside


@pytest.mark.parametrize(
    ("sql", "client"),
    [
        ("COPY (SELECT 1) TO STDOUT", True),
        ("COPY t FROM STDIN", True),
        ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", True),
        ("COPY t TO '/tmp/t.csv'", False),
        ("COPY t FROM PROGRAM 'cat /tmp/t.csv'", False),
        ("SELECT 'COPY t FROM STDIN'", False),
    ],
)
def test_copy_through_the_client_is_recognised(sql: str, client: bool) -> None:
    (statement,) = split(sql)
    assert sqlscript.client_copy(statement) is client


# --- any script made of these pieces is split exactly ----------------------------------

_PIECES = [
    "CREATE TABLE t (begin int, \"end\" text DEFAULT 'a;b')",
    "INSERT INTO paths VALUES ('C:\\')",
    "SELECT E'it\\'s; COMMIT;'",
    "DO $$ BEGIN PERFORM 1; COMMIT; END $$",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $f$ SELECT ';COMMIT;' $f$",
    "SELECT 1 /* ; COMMIT; */ + 2",
    "SELECT 'x' -- ; COMMIT;\n  , 'y'",
    "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
    "SELECT U&'\\0041;'",
]
_CONTROLS = ["COMMIT", "end", "ROLLBACK", "begin", "START TRANSACTION", "PREPARE TRANSACTION 'x'"]
_GAPS = st.sampled_from([";", ";\n", " ;\n\n", ";-- note;\n", ";/* ; */", "\n;\n;  "])


@given(
    pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8),
    gaps=st.lists(_GAPS, min_size=8, max_size=8),
    control=st.one_of(st.none(), st.tuples(st.integers(0, 8), st.sampled_from(_CONTROLS))),
    bom=st.booleans(),
)
def test_any_script_splits_into_its_statements(
    pieces: list[str], gaps: list[str], control: tuple[int, str] | None, bom: bool
) -> None:
    statements = list(pieces)
    if control is not None:
        statements.insert(min(control[0], len(statements)), control[1])
    sql = ("\ufeff" if bom else "") + "".join(
        s + gaps[i % len(gaps)] for i, s in enumerate(statements)
    )
    found: list[Statement] = split(sql)
    assert [s.text for s in found] == statements
    body = sqlscript.strip_bom(sql)
    for s in found:
        assert s.text.splitlines()[0] in body.splitlines()[s.line - 1]
    assert _control(sql) == (control[1] if control is not None else None)
