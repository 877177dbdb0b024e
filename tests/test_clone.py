"""``mtm clone``: a tenant at another's exact step, optionally with its rows.

Proves: the clone is at the source's step when head is ahead (catalog, ledger and state
row equal to the source's); ``--data`` copies identity ALWAYS columns, skips generated
ones, copies circular foreign keys (nullable, and NOT NULL both ways) and leaves them as
they were, keeps triggers from firing, sets sequences past the copied ids, casts the
schema's own types; a failure midway leaves nothing; refusals change nothing; the seed
never runs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import sqlalchemy as sa

import mtm
from _reliability import spawn, wait_until, waiting_on_gate
from conftest import Project, _libpq, make_project
from mtm import catalog
from mtm import cloning as cloning_module
from mtm.locks import SCHEMA_LOCK_CLASS

RICH = """
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    shout text GENERATED ALWAYS AS (upper(name)) STORED,
    mood mood,
    owner_id int
);
CREATE TABLE users (
    id serial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id),
    manager_id int REFERENCES users (id),
    moods mood[]
);
ALTER TABLE accounts ADD CONSTRAINT accounts_owner_fk FOREIGN KEY (owner_id) REFERENCES users (id);
CREATE TABLE eggs (id int PRIMARY KEY, hen_id int NOT NULL);
CREATE TABLE hens (id int PRIMARY KEY, egg_id int NOT NULL REFERENCES eggs (id));
ALTER TABLE eggs ADD CONSTRAINT eggs_hen_fk FOREIGN KEY (hen_id) REFERENCES hens (id);
CREATE TABLE audit (id bigserial PRIMARY KEY, note text NOT NULL);
CREATE FUNCTION log_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (note) VALUES ('user ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER users_audit AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION log_user();
CREATE TABLE events (id int NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE MATERIALIZED VIEW user_count AS SELECT count(*) AS n FROM users;
"""

ROWS = """
INSERT INTO accounts (name, mood) VALUES ('acme', 'happy'), ('globex', 'sad'), ('gone', NULL);
INSERT INTO users (account_id, manager_id, moods) VALUES (1, NULL, '{happy,sad}');
INSERT INTO users (account_id, manager_id, moods) VALUES (2, 1, NULL);
INSERT INTO users (id, account_id) VALUES (40, 1);
DELETE FROM accounts WHERE name = 'gone';
UPDATE accounts SET owner_id = 2 WHERE id = 1;
WITH e AS (INSERT INTO eggs VALUES (1, 1), (2, 2)) INSERT INTO hens VALUES (1, 1), (2, 2);
INSERT INTO events VALUES (1, '2025-06-01'), (2, '2026-06-01');
REFRESH MATERIALIZED VIEW user_count;
"""

TABLES = ("accounts", "users", "eggs", "hens", "audit", "events", "user_count")


def _rows(p: Project, schema: str, table: str) -> list[tuple[object, ...]]:
    return p.query(f"SELECT * FROM {schema}.{table} ORDER BY 1")


def _in(p: Project, schema: str, sql: str) -> object:
    """One value of ``sql`` run with ``search_path`` set to ``schema``, as an app would."""
    with psycopg.connect(_libpq(p.url), autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}")
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


def _ledger(p: Project, schema: str) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in p.query(f"SELECT name, checksum FROM {schema}.mtm_migrations ORDER BY 1")
    ]


def _state(p: Project, schema: str) -> tuple[object, ...]:
    return p.query(
        "SELECT namespace, applied, last_migration, fingerprint FROM mtm_migrations_state "
        "WHERE schema_name = %s",
        (schema,),
    )[0]


def _catalogs_equal(p: Project, a: str, b: str) -> None:
    engine = sa.create_engine(p.url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            assert catalog.compare(catalog.describe(conn, a), catalog.describe(conn, b)) == []
    finally:
        engine.dispose()


def _nothing_of(p: Project, schema: str, domain: str | None = None) -> None:
    assert schema not in p.schemas()
    assert p.scalar("SELECT count(*) FROM tenants WHERE schema_name = %s", (schema,)) == 0
    assert (
        p.scalar("SELECT count(*) FROM mtm_migrations_state WHERE schema_name = %s", (schema,)) == 0
    )
    if domain is not None:
        assert p.scalar("SELECT count(*) FROM tenants_domains WHERE domain = %s", (domain,)) == 0


def test_clone_is_at_the_sources_step_when_head_is_ahead(project: Project) -> None:
    p = project
    p.write("tenant", "0001_items.sql", "CREATE TABLE items (id serial PRIMARY KEY, name text);")
    p.write(
        "tenant",
        "0002_price.py",
        "import sqlalchemy as sa\n\ndef up(op):\n"
        "    op.add_column('items', sa.Column('price', sa.Numeric(10, 2)))\n",
    )
    assert p.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    p.query("INSERT INTO acme.items (name) VALUES ('a')")
    p.write("tenant", "0003_sku.sql", "ALTER TABLE items ADD COLUMN sku text NOT NULL DEFAULT '';")
    r = p.cli("clone", "acme", "staging", "--domain", "staging.example.com", "--name", "Staging")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("cloned tenant acme into staging at 0002_price (2 migrations) in ")
    assert r.output.rstrip().endswith("(domains: staging.example.com)")
    assert _ledger(p, "staging") == _ledger(p, "acme")
    assert [n for n, _ in _ledger(p, "staging")] == ["0001_items", "0002_price"]
    assert _state(p, "staging") == _state(p, "acme")
    _catalogs_equal(p, "acme", "staging")
    assert _rows(p, "staging", "items") == []  # no --data: no rows
    assert p.query("SELECT name FROM tenants WHERE schema_name = 'staging'") == [("Staging",)]
    # both go to head with the next migrate
    assert p.cli("migrate").exit_code == 0
    _catalogs_equal(p, "acme", "staging")
    assert _state(p, "staging") == _state(p, "acme")


def test_clone_with_data(project: Project) -> None:
    p = project
    p.write("tenant", "0001_rich.sql", RICH)
    assert p.cli("create", "acme").exit_code == 0
    p.query(f"SET search_path TO acme; {ROWS}".replace("\n", " "))
    before = {t: _rows(p, "acme", t) for t in TABLES}
    assert len(before["audit"]) == 3 and before["user_count"] == [(3,)]
    r = p.cli("clone", "acme", "copy", "--data")
    assert r.exit_code == 0, r.output
    assert " and 14 rows in 6 tables in " in r.output, r.output
    for table in TABLES:
        assert _rows(p, "copy", table) == before[table], table
    # keys and triggers are as they were: the catalog is the source's
    _catalogs_equal(p, "acme", "copy")
    assert _ledger(p, "copy") == _ledger(p, "acme") and _state(p, "copy") == _state(p, "acme")
    # sequences continue past the copied ids: users' past 40 (inserted by hand), the
    # identity's past 3 (the source's, though 3 was deleted)
    assert _in(p, "copy", "INSERT INTO users (account_id) VALUES (1) RETURNING id") == 41
    assert p.scalar("INSERT INTO copy.accounts (name) VALUES ('x') RETURNING id") == 4
    assert p.scalar("SELECT max(note) FROM copy.audit WHERE id > 3") == "user 41"  # trigger on
    # the foreign keys still hold in the clone
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        p.query("INSERT INTO copy.hens VALUES (9, 99)")
    # and the source is untouched
    assert _rows(p, "acme", "users") == before["users"]


def test_clone_with_data_from_python(project: Project) -> None:
    p = project
    p.write("tenant", "0001_rich.sql", RICH)
    config = p.config
    mtm.create(config, "acme")
    p.query(f"SET search_path TO acme; {ROWS}".replace("\n", " "))
    result = mtm.clone(config, "acme", "copy", data=True, domains=["copy.example.com"])
    assert result.source == "acme" and result.applied == ["0001_rich"]
    assert result.tenant.schema == "copy" and result.tenant.domains == ("copy.example.com",)
    assert result.rows == {"accounts": 2, "audit": 3, "eggs": 2, "events": 2, "hens": 2, "users": 3}
    # a clone without --data says no rows
    assert mtm.clone(config, "acme", "empty").rows is None


def test_a_clone_that_fails_midway_leaves_nothing(project: Project) -> None:
    """A row the source kept under a NOT VALID check cannot be copied: the whole
    clone (registry row, domain, schema, ledger, state row, rows copied so far) goes."""
    p = project
    p.write(
        "tenant",
        "0001_t.sql",
        "CREATE TABLE a (id int PRIMARY KEY);\nCREATE TABLE b (id int PRIMARY KEY, n int);",
    )
    assert p.cli("create", "acme").exit_code == 0
    p.query("INSERT INTO acme.a VALUES (1); INSERT INTO acme.b VALUES (1, -5)")
    p.write("tenant", "0002_check.sql", "ALTER TABLE b ADD CONSTRAINT b_n CHECK (n > 0) NOT VALID;")
    assert p.cli("migrate").exit_code == 0
    r = p.cli("clone", "acme", "copy", "--data", "--domain", "copy.example.com")
    assert r.exit_code == 1, r.output
    last = r.output.splitlines()[-1]
    assert last.startswith(
        "error: tenant 'copy' was not created from 'acme': copying the rows of acme failed: "
        'new row for relation "b" violates check constraint "b_n"'
    ), last
    assert last.endswith("(nothing was left behind)")
    _nothing_of(p, "copy", "copy.example.com")
    assert p.cli("validate").exit_code == 0


def test_refusals_change_nothing(project: Project) -> None:
    p = project
    p.write("tenant", "0001_t.sql", "CREATE TABLE t (id int);")
    assert p.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    assert p.cli("create", "globex").exit_code == 0
    cases = [
        (("nope", "copy"), "error: no tenant 'nope' is registered"),
        (("acme", "globex"), "error: tenant 'globex' already exists"),
        (
            ("acme", "copy", "--domain", "acme.example.com"),
            "error: domain 'acme.example.com' already belongs to tenant 'acme'",
        ),
        (("acme", 'x"; DROP SCHEMA acme; --'), "error: schema name"),
        (("acme", "pg_copy"), "error: schema name"),
    ]
    for args, message in cases:
        r = p.cli("clone", *args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith(message) and r.output.count("\n") == 1, (args, r.output)
    p.query("CREATE SCHEMA loose")
    r = p.cli("clone", "acme", "loose")
    assert r.exit_code == 2 and "schema 'loose' already exists" in r.output
    assert p.schemas() == {"acme", "globex", "loose"}


def test_a_source_whose_files_changed_is_refused(project: Project) -> None:
    p = project
    first = p.write("tenant", "0001_t.sql", "CREATE TABLE t (id int);")
    second = p.write("tenant", "0002_u.sql", "CREATE TABLE u (id int);")
    assert p.cli("create", "acme").exit_code == 0
    first.write_text("CREATE TABLE t (id bigint);")
    r = p.cli("clone", "acme", "copy")
    assert r.exit_code == 2, r.output
    assert r.output.startswith(
        "error: tenant 'acme' cannot be cloned: its migration 0001_t was applied from a "
        "file that has changed since"
    )
    first.write_text("CREATE TABLE t (id int);")
    second.unlink()
    r = p.cli("clone", "acme", "copy")
    assert r.exit_code == 2, r.output
    assert r.output == (
        "error: tenant 'acme' cannot be cloned: its migration 0002_u has no file any more, "
        "so its step cannot be rebuilt (restore the file)\n"
    )
    p.query("DELETE FROM acme.mtm_migrations WHERE name = '0002_u'")
    p.query("UPDATE acme.mtm_migrations SET checksum = NULL")  # as an adopted row is
    r = p.cli("clone", "acme", "copy")
    assert r.exit_code == 2, r.output
    assert r.output == (
        "error: tenant 'acme' cannot be cloned: its migration 0001_t was recorded without "
        "a checksum, so nothing says its file built it\n"
    )
    assert "copy" not in p.schemas()


GATE = 7311


@contextmanager
def _gate(p: Project) -> Iterator[psycopg.Connection]:
    with psycopg.connect(_libpq(p.url), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        yield conn


def test_clone_is_refused_while_a_migrate_runs(project: Project) -> None:
    p = project
    p.write("tenant", "0001_t.sql", "CREATE TABLE t (id int);")
    assert p.cli("create", "acme").exit_code == 0
    p.write("tenant", "0002_gated.sql", f"SELECT pg_advisory_xact_lock({GATE});")
    with _gate(p) as g:
        run = spawn(p, "migrate", "--lock-timeout", "60s")
        try:
            wait_until(lambda: waiting_on_gate(p, GATE) == 1, message="migrate at the gate")
            r = p.run("clone", "acme", "copy")
            assert r.returncode == 2, r.stderr
            assert r.stderr.startswith(
                "error: tenant 'acme' was not cloned: another mtm run holds the migration "
                f"lock and may be changing it: mtm migrate pid={run.pid} "
            ), r.stderr
            assert "Traceback" not in r.stderr
        finally:
            g.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            run.communicate(timeout=120)
    assert run.returncode == 0
    assert "copy" not in p.schemas()
    # a real process, once the run is over, logging its clone
    r = p.run("-v", "--log-format", "json", "clone", "acme", "copy", "--data")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stderr.splitlines()]
    cloned = [x for x in records if x["event"] == "tenant.clone"]
    assert len(cloned) == 1 and cloned[0]["level"] == "INFO"
    assert (cloned[0]["schema"], cloned[0]["source"], cloned[0]["rows"]) == ("copy", "acme", 0)
    assert _ledger(p, "copy") == _ledger(p, "acme")


def test_the_seed_never_runs_on_clone(project: Project) -> None:
    p = make_project(project.root, project.url, 'seed = "seeds/tenant.sql"\n')
    p.write("tenant", "0001_t.sql", "CREATE TABLE settings (key text PRIMARY KEY);")
    (p.root / "seeds").mkdir()
    (p.root / "seeds" / "tenant.sql").write_text("INSERT INTO settings VALUES ('seeded');")
    assert p.cli("create", "acme").exit_code == 0
    p.query("INSERT INTO acme.settings VALUES ('own')")
    assert p.cli("clone", "acme", "bare").exit_code == 0
    assert _rows(p, "bare", "settings") == []
    r = p.cli("clone", "acme", "whole", "--data")
    assert r.exit_code == 0, r.output  # a seed run too would collide on the key
    assert _rows(p, "whole", "settings") == [("own",), ("seeded",)]


def test_clone_with_data_refuses_a_migration_outside_a_transaction(project: Project) -> None:
    p = project
    p.write("tenant", "0001_t.sql", "CREATE TABLE t (id int);")
    p.write(
        "tenant",
        "0002_i.sql",
        "-- mtm:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_i ON t (id);",
    )
    assert p.cli("create", "acme").exit_code == 0
    r = p.cli("clone", "acme", "copy", "--data")
    assert r.exit_code == 2 and "migration 0002_i runs outside a transaction" in r.output
    assert "copy" not in p.schemas()
    r = p.cli("clone", "acme", "copy")  # without rows it is a create at that step
    assert r.exit_code == 0, r.output
    _catalogs_equal(p, "acme", "copy")


def _clone_waiting_for_acme(p: Project) -> subprocess.Popen[str]:
    """``mtm clone acme copy --data`` as a process, once it waits for acme's lock (held
    by the test)."""
    cloning = spawn(p, "clone", "acme", "copy", "--data")
    try:
        wait_until(
            lambda: p.scalar(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name LIKE 'waiting for schema acme:%%'"
            ),
            message="the clone waiting for acme's lock",
        )
    except BaseException:
        cloning.kill()
        cloning.communicate()
        raise
    return cloning


def test_a_source_that_moves_before_the_clone_gets_its_lock_is_refused(project: Project) -> None:
    """The clone read the source's ledger, then waits for its lock; a step recorded
    meanwhile makes the ledger check under the lock refuse, leaving nothing."""
    p = project
    p.write("tenant", "0001_t.sql", "CREATE TABLE t (id int);")
    assert p.cli("create", "acme").exit_code == 0
    with psycopg.connect(_libpq(p.url), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('acme'))", (SCHEMA_LOCK_CLASS,))
        cloning = _clone_waiting_for_acme(p)
        try:
            holder.execute(
                "INSERT INTO acme.mtm_migrations (name, checksum) VALUES ('0002_x', 'x')"
            )
        finally:
            holder.execute("SELECT pg_advisory_unlock_all()")
            _, err = cloning.communicate(timeout=120)
    assert cloning.returncode == 2, err
    assert err == (
        "error: tenant 'copy' was not created: tenant 'acme' changed while it was being "
        "cloned (a migrate, down or stamp ran on it); run clone again\n"
    )
    _nothing_of(p, "copy")


def test_a_clone_with_rows_holds_the_sources_lock_from_before_its_snapshot(
    project: Project,
) -> None:
    """A clone with its rows reads in one snapshot (REPEATABLE READ), taken at its
    transaction's first statement. The source's lock must already be held then: were it
    taken later in the transaction, a migrate could commit on the source in between,
    and the ledger check under that old snapshot would pass a clone of a stale source.
    The clone is frozen after its snapshot (its registry row waits for an uncommitted
    one), and the source's lock is tried from outside: it must be taken."""
    p = project
    p.write("tenant", "0001_t.sql", "CREATE TABLE t (id int PRIMARY KEY);")
    assert p.cli("create", "acme").exit_code == 0
    p.query("INSERT INTO acme.t VALUES (1)")
    key = "SELECT pg_try_advisory_lock(%s, hashtext('acme'))"
    with (
        psycopg.connect(_libpq(p.url), autocommit=True) as holder,
        psycopg.connect(_libpq(p.url)) as blocker,
    ):
        assert holder.execute(key, (SCHEMA_LOCK_CLASS,)).fetchone() == (True,)
        cloning = _clone_waiting_for_acme(p)
        try:
            blocker.execute("INSERT INTO tenants (schema_name) VALUES ('copy')")
            holder.execute("SELECT pg_advisory_unlock_all()")
            wait_until(
                lambda: p.scalar(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' "
                    "AND NOT granted AND pid <> pg_backend_pid()"
                ),
                message="the clone's registry row waiting for the uncommitted one",
            )
            took = holder.execute(key, (SCHEMA_LOCK_CLASS,)).fetchone() == (True,)
            if took:  # what a migrate of acme could then do under the clone's snapshot
                holder.execute(
                    "INSERT INTO acme.mtm_migrations (name, checksum) VALUES ('0002_x', 'x')"
                )
                holder.execute("SELECT pg_advisory_unlock_all()")
        finally:
            blocker.rollback()
            _, err = cloning.communicate(timeout=120)
    assert not took, "the source's lock was free after the clone had taken its snapshot"
    assert cloning.returncode == 0, err
    assert p.scalar("SELECT count(*) FROM copy.t") == 1
    assert p.query("SELECT name FROM copy.mtm_migrations") == p.query(
        "SELECT name FROM acme.mtm_migrations"
    )


def test_order_puts_referenced_tables_first_and_names_the_keys_of_cycles() -> None:
    key = cloning_module._Key
    keys = [
        key("users_account", "users", "accounts", False, False),
        key("accounts_owner", "accounts", "users", False, False),
        key("users_manager", "users", "users", False, False),  # itself: needs nothing
        key("orders_user", "orders", "users", False, False),
        key("lines_order", "lines", "orders", True, False),
        key("outside", "lines", "public_plans", False, False),  # not a table copied
    ]
    order, cyclic = cloning_module._order(["lines", "orders", "users", "accounts", "plain"], keys)
    assert sorted(order) == ["accounts", "lines", "orders", "plain", "users"]
    assert order.index("users") < order.index("orders") < order.index("lines")
    assert order.index("accounts") < order.index("orders")
    assert {k.name for k in cyclic} == {"users_account", "accounts_owner"}


def test_a_migration_outside_a_transaction_failing_in_a_clone(project: Project) -> None:
    """Without --data a clone is a create at that step: a no-transaction migration runs
    after the commit, and if it fails the message says how to finish the clone."""
    p = project
    p.write("public", "0001_flag.sql", "CREATE TABLE flag (n int); INSERT INTO flag VALUES (1);")
    p.write("tenant", "0001_t.sql", "CREATE TABLE t (id int);")
    p.write(
        "tenant",
        "0002_i.sql",
        "-- mtm:no-transaction\nSELECT 1 / (SELECT count(*) FROM public.flag)::int;",
    )
    p.write("tenant", "0003_u.sql", "CREATE TABLE u (id int);")
    assert p.cli("create", "acme").exit_code == 0
    p.query("DELETE FROM public.flag")
    r = p.cli("clone", "acme", "copy")
    assert r.exit_code == 1, r.output
    last = r.output.splitlines()[-1]
    assert last.startswith("error: tenant 'copy' was cloned, but migration 0002_i failed after it")
    assert last.endswith("fix it and run 'mtm migrate --tenant copy --to tenant:0003_u'")
    p.query("INSERT INTO public.flag VALUES (1)")
    r = p.cli("migrate", "--tenant", "copy", "--to", "tenant:0003_u")
    assert r.exit_code == 0, r.output
    assert _ledger(p, "copy") == _ledger(p, "acme")
    _catalogs_equal(p, "acme", "copy")
