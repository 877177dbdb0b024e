"""A migration cannot end the transaction of its step, however the COMMIT is hidden.

SQL files are read with PostgreSQL's grammar and refused before anything runs; Python
migrations are stopped when they send transaction control through SQLAlchemy; what is
left (PL/pgSQL, procedures) PostgreSQL itself refuses inside a transaction block.
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from _reliability import ledger, tables
from conftest import Project
from mtm.database import _connect_args, _url_options

# Each hides a COMMIT from a splitter that is not PostgreSQL's; after it, a CREATE TABLE
# would run outside the step's transaction (and with search_path reset: in public).
HIDDEN_COMMITS = {
    "column named begin": (
        "CREATE TABLE t (begin int);\nCOMMIT;\nCREATE TABLE invoices (id int);",
        2,
        "COMMIT",
    ),
    "string ending in a backslash": (
        "CREATE TABLE t (p text);\nINSERT INTO t VALUES ('C:\\');\nCOMMIT;\n"
        "CREATE TABLE invoices (id int);",
        3,
        "COMMIT",
    ),
    "END after a block comment": (
        "CREATE TABLE t (id int); /* ; */ END;\nCREATE TABLE invoices (id int);",
        1,
        "END",
    ),
    "E-string with an escaped quote": (
        "CREATE TABLE t (p text);\nINSERT INTO t VALUES (E'it\\'s');\n"
        "ROLLBACK; CREATE TABLE invoices (id int);",
        3,
        "ROLLBACK",
    ),
    "release of a savepoint made before": (
        "CREATE TABLE t (id int);\nRELEASE SAVEPOINT mtm;\nCREATE TABLE invoices (id int);",
        2,
        "RELEASE SAVEPOINT mtm",
    ),
}


def _one_line_error(output: str) -> None:
    assert output.startswith("error: ") and output.strip().count("\n") == 0, output
    assert "Traceback" not in output


def _nothing_in_public(project: Project) -> None:
    assert project.scalar("SELECT to_regclass('public.invoices')") is None
    assert project.scalar("SELECT to_regclass('public.t')") is None


@pytest.mark.parametrize("case", sorted(HIDDEN_COMMITS))
def test_hidden_transaction_control_is_refused_before_anything_runs(
    project: Project, case: str
) -> None:
    sql, line, statement = HIDDEN_COMMITS[case]
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    path = project.write("tenant", "0002_hidden.sql", sql)
    for command in (["migrate"], ["create", "globex"], ["status", "--check"]):
        r = project.cli(*command)
        assert r.exit_code == 2, (command, r.output)
        _one_line_error(r.output)
        assert f"{path}:{line}: the up script contains {statement!r}" in r.output
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items"}
    assert project.schemas() == {"acme"}
    _nothing_in_public(project)


def test_hidden_commit_in_a_public_migration_changes_nothing(project: Project) -> None:
    sql, line, _ = HIDDEN_COMMITS["column named begin"]
    path = project.write("public", "0001_hidden.sql", sql)
    r = project.cli("migrate")
    assert r.exit_code == 2
    _one_line_error(r.output)
    assert f"{path}:{line}: the up script contains 'COMMIT'" in r.output
    assert project.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ("CREATE TABLE t (id int);\nCOPY (SELECT 1) TO STDOUT;\nCREATE TABLE x (id int);", 2),
        ("CREATE TABLE t (id int);\n\nCOPY t FROM STDIN;\n", 3),
        ("-- mtm:no-transaction\nCREATE TABLE t (id int);\nCOPY t TO STDOUT;\n", 3),
    ],
)
def test_copy_through_the_client_is_refused_before_anything_runs(
    project: Project, content: str, line: int
) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    path = project.write("tenant", "0002_copy.sql", content)
    for command in (["migrate"], ["create", "globex"]):
        r = project.cli(*command)
        assert r.exit_code == 2, (command, r.output)
        _one_line_error(r.output)
        assert f"{path}:{line}: the up script contains 'COPY" in r.output
        assert "COPY FROM STDIN or TO STDOUT needs a data stream" in r.output
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items"}
    assert project.schemas() == {"acme"}
    _nothing_in_public(project)


def test_a_statement_that_cannot_run_in_a_transaction_needs_the_marker(
    project: Project,
) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    body = "CREATE TABLE t (id int);\nCREATE INDEX CONCURRENTLY items_id ON items (id);\n"
    path = project.write("tenant", "0002_index.sql", body)
    r = project.cli("migrate")
    assert r.exit_code == 2
    _one_line_error(r.output)
    assert (
        f"{path}:2: the up script contains 'CREATE INDEX CONCURRENTLY items_id ON items (id)', "
        "which PostgreSQL cannot run inside a transaction; mark the file "
        "'-- mtm:no-transaction'" in r.output
    )
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items"}

    project.write("tenant", "0002_index.sql", "-- mtm:no-transaction\n" + body)
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert ledger(project, "acme") == ["0001_items", "0002_index"]
    assert project.scalar("SELECT to_regclass('acme.items_id')") is not None


@pytest.mark.parametrize(
    "content",
    [
        "CREATE TABLE t (id int);\nDO $$ BEGIN COMMIT; END $$;\nCREATE TABLE invoices (id int);",
        "CREATE PROCEDURE acme_p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;\n"
        "CALL acme_p();\nCREATE TABLE invoices (id int);",
    ],
)
def test_commit_inside_plpgsql_is_refused_by_the_server(project: Project, content: str) -> None:
    """Not refused when read: PostgreSQL refuses it while mtm's transaction is open."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write("tenant", "0002_plpgsql.sql", content)
    r = project.cli("migrate")
    assert r.exit_code == 1, r.output
    assert "FAILED acme: migration 0002_plpgsql: invalid transaction termination" in r.output
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items"}
    r = project.cli("create", "globex")
    assert r.exit_code == 1 and "invalid transaction termination" in r.output
    assert project.schemas() == {"acme"}
    _nothing_in_public(project)
    assert project.cli("validate").exit_code == 0


def test_a_byte_order_mark_is_not_a_syntax_error(project: Project) -> None:
    project.migrations.joinpath("tenant").mkdir(parents=True, exist_ok=True)
    path = project.migrations / "tenant" / "0001_bom.sql"
    path.write_bytes("\ufeffCREATE TABLE items (id int);\n".encode())
    r = project.cli("create", "acme")
    assert r.exit_code == 0, r.output
    assert tables(project, "acme") == {"items"}
    assert project.cli("validate").exit_code == 0

    path.write_bytes("\ufeffCREATE TABLE items (id int);\nCREAT TABLE x (id int);\n".encode())
    r = project.cli("validate")
    assert r.exit_code == 2
    _one_line_error(r.output)
    assert f'{path}:2: syntax error in the up script: syntax error at or near "CREAT"' in (r.output)


def test_backslashes_are_read_alike_where_the_database_turned_conforming_strings_off(
    project: Project,
) -> None:
    """One statement for PostgreSQL's grammar with standard_conforming_strings on; with it
    off, the server would see 'x\\' || ' as the string and run a COMMIT after it."""
    database = make_url(project.url).database
    project.query(f'ALTER DATABASE "{database}" SET standard_conforming_strings = off')
    project.write(
        "tenant",
        "0001_items.sql",
        "CREATE TABLE items (id int);\n"
        "SELECT 'x\\' || ' ; COMMIT; CREATE TABLE public.invoices (id int); --';\n",
    )
    for schema in ("acme", "globex"):
        assert project.cli("create", schema).exit_code == 0
    r = project.cli("migrate")  # nothing to do
    assert r.exit_code == 0, r.output
    _nothing_in_public(project)
    assert ledger(project, "acme") == ["0001_items"]
    assert project.cli("validate").exit_code == 0


def test_options_in_the_url_are_kept() -> None:
    url = make_url("postgresql://u@h/d?options=-c%20work_mem%3D4MB")
    assert _connect_args(_url_options(url), "mtm")["options"] == (
        "-c work_mem=4MB -c standard_conforming_strings=on"
    )


# --- Python migrations --------------------------------------------------------------------

PYTHON_COMMITS = {
    "op.execute": ('op.execute("COMMIT")\n    op.execute("BEGIN")', "'COMMIT'", 5),
    "several statements in one string": ('op.execute("SELECT 1; COMMIT; BEGIN")', "'COMMIT'", 5),
    "text()": ('op.execute(sa.text("END"))', "'END'", 5),
    "the bound connection": ('op.get_bind().exec_driver_sql("ROLLBACK")', "'ROLLBACK'", 5),
    "commit()": ("op.get_bind().commit()", "commit()", 5),
    "a refusal caught": (
        'try:\n        op.execute("COMMIT")\n    except Exception:\n        pass',
        "'COMMIT'",
        6,
    ),
}


@pytest.mark.parametrize("case", sorted(PYTHON_COMMITS))
def test_transaction_control_through_op_fails_the_step(project: Project, case: str) -> None:
    call, what, line = PYTHON_COMMITS[case]
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    for schema in ("acme", "globex"):
        assert project.cli("create", schema).exit_code == 0
    project.write(
        "tenant",
        "0002_commits.py",
        "import sqlalchemy as sa\n\ndef up(op):\n"
        f'    op.execute("CREATE TABLE a (id int)")\n    {call}\n'
        '    op.execute("CREATE TABLE invoices (id int)")\n',
    )
    # One worker, both tenants: the connection is still fit for the next schema.
    r = project.cli("migrate", "--jobs", "1", "--continue-on-error")
    assert r.exit_code == 1, r.output
    for schema in ("acme", "globex"):
        assert (
            f"FAILED {schema}: migration 0002_commits: TransactionControlRefused: sent {what} "
            "inside mtm's transaction"
        ) in r.output
        assert f"(at 0002_commits.py:{line})" in r.output
        assert ledger(project, schema) == ["0001_items"]
        assert tables(project, schema) == {"items"}
    _nothing_in_public(project)
    assert project.cli("validate").exit_code == 0  # every schema is at a clean step

    r = project.cli("create", "initech")
    assert r.exit_code == 1 and "TransactionControlRefused" in r.output
    assert project.schemas() == {"acme", "globex"}


def test_savepoints_and_no_transaction_python_migrations_are_free(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    project.write(
        "tenant",
        "0002_savepoints.py",
        """
        import sqlalchemy as sa

        def up(op):
            op.execute("SAVEPOINT s")
            op.execute("INSERT INTO items VALUES (1)")
            op.execute("ROLLBACK TO SAVEPOINT s")
            with op.get_bind().begin_nested():
                op.execute("INSERT INTO items VALUES (2)")
            # Parameters reach the hook as %(name)s, which is not SQL: still accepted.
            op.execute(sa.text("INSERT INTO items SELECT :v WHERE '%' = '%'").bindparams(v=4))
            op.bulk_insert(sa.table("items", sa.column("id")), [{"id": 5}, {"id": 6}])
        """,
    )
    project.write(
        "tenant",
        "0003_batches.py",
        """
        transactional = False

        def up(op):
            op.execute("BEGIN")
            op.execute("INSERT INTO items VALUES (3)")
            op.execute("COMMIT")
        """,
    )
    r = project.cli("create", "acme")
    assert r.exit_code == 0, r.output
    assert ledger(project, "acme") == ["0001_items", "0002_savepoints", "0003_batches"]
    assert [r[0] for r in project.query("SELECT id FROM acme.items ORDER BY id")] == [2, 3, 4, 5, 6]
