"""Nothing half-done: transaction boundaries of steps, no-transaction migrations, down."""

from __future__ import annotations

from _reliability import index_valid, ledger, tables
from conftest import Project

INDEX_UP = """\
-- mtm:no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_idx ON items (id);
-- mtm:down
DROP INDEX CONCURRENTLY IF EXISTS items_id_idx;
"""


def test_no_transaction_sql_migration_up_and_down(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    for schema in ("acme", "globex"):
        assert project.cli("create", schema).exit_code == 0
    project.write("tenant", "0002_index.sql", INDEX_UP)
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    for schema in ("acme", "globex"):
        assert index_valid(project, schema) is True
        assert ledger(project, schema) == ["0001_items", "0002_index"]
    assert project.cli("validate").exit_code == 0

    # A new tenant gets it too (after its transactional part is committed).
    assert project.cli("create", "initech").exit_code == 0
    assert index_valid(project, "initech") is True
    assert ledger(project, "initech") == ["0001_items", "0002_index"]

    # down runs DROP INDEX CONCURRENTLY outside a transaction as well.
    r = project.cli("down", "--all-tenants")
    assert r.exit_code == 0, r.output
    for schema in ("acme", "globex", "initech"):
        assert index_valid(project, schema) is None
        assert ledger(project, schema) == ["0001_items"]
    assert project.cli("validate").exit_code == 0
    assert project.cli("migrate").exit_code == 0
    assert index_valid(project, "acme") is True


def test_no_transaction_python_migration(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write(
        "tenant",
        "0002_index.py",
        """
        transactional = False


        def up(op):
            op.create_index("items_id_idx", "items", ["id"], postgresql_concurrently=True)


        def down(op):
            op.drop_index("items_id_idx", "items", postgresql_concurrently=True)
        """,
    )
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert index_valid(project, "acme") is True
    r = project.cli("down", "--tenant", "acme")
    assert r.exit_code == 0, r.output
    assert index_valid(project, "acme") is None


def test_no_transaction_failure_records_nothing_and_a_fixed_file_goes_on(
    project: Project,
) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write(
        "tenant",
        "0002_index.sql",
        "-- mtm:no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_idx ON items (id);\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS nope_idx ON missing_table (id);\n",
    )
    r = project.cli("migrate")
    assert r.exit_code == 1
    assert "FAILED acme: migration 0002_index" in r.output
    assert 'relation "missing_table" does not exist' in r.output
    assert ledger(project, "acme") == ["0001_items"]  # not recorded: it did not finish
    assert project.cli("validate").exit_code == 0
    project.write(
        "tenant",
        "0002_index.sql",
        "-- mtm:no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_idx ON items (id);\n",
    )
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert ledger(project, "acme") == ["0001_items", "0002_index"]


def test_a_failing_step_leaves_nothing_behind(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write(
        "tenant",
        "0002_half.sql",
        "CREATE TABLE half (id int);\nINSERT INTO half VALUES (1);\nSELECT 1 / 0;",
    )
    r = project.cli("migrate")
    assert r.exit_code == 1
    assert "FAILED acme: migration 0002_half: division by zero" in r.output
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items"}


def test_sql_that_controls_the_transaction_is_refused_at_discovery(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    path = project.write(
        "tenant",
        "0002_own_tx.sql",
        "BEGIN;\nCREATE TABLE a (id int);\nCOMMIT;\nCREATE TABLE b (id int);\nSELECT 1 / 0;",
    )
    for command in (["migrate"], ["status"], ["validate"], ["create", "globex"]):
        r = project.cli(*command)
        assert r.exit_code == 2, (command, r.output)
        assert f"{path}:1: the up script contains 'BEGIN'" in r.output
        assert "mtm:no-transaction" in r.output
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items"}
    assert project.schemas() == {"acme"}

    project.write("tenant", "0002_own_tx.sql", "CREATE TABLE a (id int);\nCOMMIT;")
    r = project.cli("migrate")
    assert r.exit_code == 2 and "0002_own_tx.sql:2: the up script contains 'COMMIT'" in r.output
    project.write(
        "tenant",
        "0002_own_tx.sql",
        "CREATE TABLE a (id int);\n-- mtm:down\nROLLBACK;\nDROP TABLE a;",
    )
    r = project.cli("migrate")
    assert r.exit_code == 2 and "0002_own_tx.sql:3: the down script contains 'ROLLBACK'" in r.output


def test_plpgsql_blocks_and_function_bodies_are_accepted(project: Project) -> None:
    project.write(
        "tenant",
        "0001_blocks.sql",
        """
        CREATE TABLE items (id int);
        DO $$
        BEGIN
            INSERT INTO items VALUES (1);
        END
        $$;
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            RETURN NEW;
        END;
        $body$;
        CREATE FUNCTION one() RETURNS int LANGUAGE sql
        BEGIN ATOMIC
            SELECT 1;
        END;
        SAVEPOINT s;
        ROLLBACK TO SAVEPOINT s;
        RELEASE SAVEPOINT s;
        """,
    )
    r = project.cli("create", "acme")
    assert r.exit_code == 0, r.output
    assert project.scalar("SELECT acme.one()") == 1
    assert project.scalar("SELECT count(*) FROM acme.items") == 1


def test_no_transaction_files_may_hold_transaction_control(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    project.write(
        "tenant",
        "0002_batches.sql",
        "-- mtm:no-transaction\nBEGIN;\nINSERT INTO items VALUES (1);\nCOMMIT;\n",
    )
    r = project.cli("create", "acme")
    assert r.exit_code == 0, r.output
    assert project.scalar("SELECT count(*) FROM acme.items") == 1


def test_down_refuses_before_changing_anything(project: Project) -> None:
    project.write(
        "tenant", "0001_items.sql", "CREATE TABLE items (id int);\n-- mtm:down\nDROP TABLE items;"
    )
    project.write("tenant", "0002_orders.sql", "CREATE TABLE orders (id int);")  # no down
    project.write(
        "tenant", "0003_notes.sql", "CREATE TABLE notes (id int);\n-- mtm:down\nDROP TABLE notes;"
    )
    for schema in ("acme", "globex"):
        assert project.cli("create", schema).exit_code == 0
    r = project.cli("down", "--all-tenants", "--steps", "2")
    assert r.exit_code == 2
    assert "refusing to revert anything" in r.output
    assert "acme: migration 0002_orders has no down" in r.output
    assert "globex: migration 0002_orders has no down" in r.output
    for schema in ("acme", "globex"):  # not even 0003, which has a down
        assert ledger(project, schema) == ["0001_items", "0002_orders", "0003_notes"]
        assert tables(project, schema) == {"items", "orders", "notes"}

    # The same when one tenant would be fine and another is not.
    assert project.cli("down", "--tenant", "globex").exit_code == 0
    r = project.cli("down", "--all-tenants", "--to", "0001_items")
    assert r.exit_code == 2
    assert "acme: migration 0002_orders has no down" in r.output
    assert ledger(project, "acme") == ["0001_items", "0002_orders", "0003_notes"]
    assert ledger(project, "globex") == ["0001_items", "0002_orders"]


def test_an_invalid_index_left_by_a_failed_concurrent_build_is_not_recorded(
    project: Project,
) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.query("INSERT INTO acme.items VALUES (1), (1)")
    project.write(
        "tenant",
        "0002_unique.sql",
        "-- mtm:no-transaction\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_u ON items (id);",
    )
    r = project.cli("migrate")
    assert r.exit_code == 1 and "could not create unique index" in r.output
    project.query("DELETE FROM acme.items")
    # IF NOT EXISTS now skips the INVALID index the failed build left: mtm notices.
    r = project.cli("migrate")
    assert r.exit_code == 1
    assert "FAILED acme: migration 0002_unique: schema acme has an INVALID index: items_u" in (
        r.output
    )
    assert ledger(project, "acme") == ["0001_items"]
    project.query("DROP INDEX acme.items_u")
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert ledger(project, "acme") == ["0001_items", "0002_unique"]


def test_a_python_migration_that_commits_underneath_is_reported(project: Project) -> None:
    """On the driver connection, below SQLAlchemy, a COMMIT is only seen after the fact."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write(
        "tenant",
        "0002_commits.py",
        """
        def up(op):
            op.execute("CREATE TABLE a (id int)")
            op.get_bind().connection.driver_connection.execute("COMMIT")
        """,
    )
    r = project.cli("migrate")
    assert r.exit_code == 1
    assert "0002_commits.py ended mtm's transaction itself" in r.output
    # What ran before the COMMIT is committed, as the message says; the step is not
    # recorded (its ledger row comes after the body), so ledger and summary agree.
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items", "a"}
    assert project.cli("validate").exit_code == 0


def test_a_python_migration_that_commits_and_begins_again_underneath_is_caught(
    project: Project,
) -> None:
    """COMMIT then BEGIN on the driver leaves a transaction open, as if nothing happened:
    the frame's own check (its transaction mark is gone) fails the step, and nothing
    after the COMMIT, the ledger row above all, is kept."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    project.write(
        "tenant",
        "0002_commits.py",
        """
        def up(op):
            op.execute("CREATE TABLE a (id int)")
            raw = op.get_bind().connection.driver_connection
            raw.execute("COMMIT")
            raw.execute("BEGIN")
            op.execute("CREATE TABLE b (id int)")
        """,
    )
    r = project.cli("migrate")
    assert r.exit_code == 1, r.output
    assert "ended mtm's transaction itself" in r.output
    assert "MTM04" in r.output
    assert ledger(project, "acme") == ["0001_items"]
    assert tables(project, "acme") == {"items", "a"}
    assert project.cli("validate").exit_code == 0
    # A create says exactly what it left: the tenant, registered, with what ran before
    # the COMMIT; the ledger names only what ran whole.
    r = project.cli("create", "globex")
    assert r.exit_code == 1, r.output
    assert "'globex' was left partly created" in r.output
    assert "ended mtm's transaction itself" in r.output and "0002_commits" in r.output
    assert "mtm drop globex --yes" in r.output
    assert ledger(project, "globex") == ["0001_items"]
    assert tables(project, "globex") == {"items", "a"}
    assert project.scalar("SELECT count(*) FROM public.tenants WHERE schema_name = 'globex'") == 1
    assert project.cli("drop", "globex", "--yes").exit_code == 0
