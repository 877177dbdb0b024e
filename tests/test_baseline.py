"""The baseline of a reference schema builds the same structure in any other schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mtm import baseline, catalog
from mtm.config import sqlalchemy_url
from mtm.errors import MtmError

# A legacy tenant schema: serial and identity columns, a sequence, FKs inside the schema
# and to public, a CHECK, an expression index, an enum used by a column, a view, a
# function with its trigger, a domain, a partitioned table, a row-level security policy, a
# literal and a function body naming the schema.
REFERENCE = """
CREATE SCHEMA legacy_ref;
SET search_path = legacy_ref;
CREATE TYPE status AS ENUM ('new', 'paid', 'void');
CREATE DOMAIN money_amount AS numeric(12, 2) CHECK (VALUE >= 0);
CREATE SEQUENCE invoice_numbers START 1000 INCREMENT 10 MAXVALUE 99999 CYCLE;
CREATE TABLE customers (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    plan_id int REFERENCES public.plans (id) ON DELETE SET NULL,
    note text DEFAULT 'see legacy_ref.customers'
);
CREATE TABLE invoices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number int NOT NULL DEFAULT nextval('invoice_numbers'),
    customer_id int NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    state status NOT NULL DEFAULT 'new',
    total money_amount,
    lines int CHECK (lines BETWEEN 0 AND 500),
    updated_at timestamptz,
    CONSTRAINT invoices_total_check CHECK (total IS NULL OR lines > 0)
);
CREATE INDEX customers_lower_email ON customers (lower(email));
CREATE INDEX invoices_open ON invoices (customer_id, (lines * 2)) WHERE state <> 'void';
CREATE UNIQUE INDEX invoices_number ON invoices (number);
CREATE VIEW open_invoices AS
    SELECT i.id, c.email, i.total FROM invoices i JOIN customers c ON c.id = i.customer_id
    WHERE i.state = 'new';
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();  -- legacy_ref.invoices keeps its own clock
    RETURN NEW;
END
$$;
CREATE TRIGGER invoices_touch BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TABLE events (at date NOT NULL, customer_id int) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
CREATE POLICY customers_with_plan ON customers USING (plan_id IS NOT NULL);
CREATE TABLE mtm_migrations (name text PRIMARY KEY, checksum text NOT NULL);
SET search_path = public;
"""


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    engine = sa.create_engine(sqlalchemy_url(database_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE public.plans (id int PRIMARY KEY)")
        connection.exec_driver_sql(REFERENCE)
        yield connection
    engine.dispose()


def run_in(conn: Connection, schema: str, sql: str) -> None:
    conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"; SET search_path = "{schema}";\n{sql}')
    conn.exec_driver_sql("SET search_path = public")


def test_baseline_builds_an_equal_schema(conn: Connection, database_url: str) -> None:
    """The contract: run in a new schema, the baseline gives a catalog equal to the reference."""
    made = baseline.baseline(database_url, "legacy_ref", ledger_table="mtm_migrations")
    assert (
        made.server_version // 10000
        == int(conn.execute(sa.text("SHOW server_version_num")).scalar_one()) // 10000
    )
    run_in(conn, "tenant_new", made.sql)
    run_in(conn, "tenant_other", made.sql)
    reference = catalog.describe(conn, "legacy_ref", exclude=["mtm_migrations"])
    for schema in ("tenant_new", "tenant_other"):
        built = catalog.describe(conn, schema)
        assert catalog.compare(reference, built) == []
        assert built == reference
    prints = catalog.fingerprints(
        conn, ["legacy_ref", "tenant_new", "tenant_other"], exclude=["mtm_migrations"]
    )
    assert len(set(prints.values())) == 1
    # what the reference holds beyond structure stays out
    assert "mtm_migrations" not in made.sql
    for fragment in ("OWNER TO", "GRANT", "set_config", "CREATE SCHEMA", "\\restrict"):
        assert fragment not in made.sql
    assert "public.plans" in made.sql
    assert "nextval('customers_id_seq'::regclass)" in made.sql
    # the literal and the function body that name the schema are kept as written, and said
    assert "'see legacy_ref.customers'" in made.sql
    assert "-- legacy_ref.invoices keeps its own clock" in made.sql
    assert len(made.warnings) == 2
    assert any("CREATE TABLE customers" in w for w in made.warnings)
    assert any("CREATE FUNCTION touch()" in w for w in made.warnings)


def test_a_changed_reference_no_longer_matches(conn: Connection, database_url: str) -> None:
    """The comparison the contract relies on does see a difference."""
    made = baseline.baseline(database_url, "legacy_ref", ledger_table="mtm_migrations")
    run_in(conn, "tenant_new", made.sql)
    conn.exec_driver_sql("ALTER TABLE tenant_new.invoices ALTER COLUMN lines SET DEFAULT 1")
    diffs = catalog.compare(
        catalog.describe(conn, "legacy_ref", exclude=["mtm_migrations"]),
        catalog.describe(conn, "tenant_new"),
    )
    assert [str(d) for d in diffs] == [
        "column invoices.lines: default is '1', expected None",
    ]


def test_baseline_of_a_missing_schema_is_refused(conn: Connection, database_url: str) -> None:
    with pytest.raises(MtmError, match=r"^schema 'nowhere' does not exist: name the reference"):
        baseline.baseline(database_url, "nowhere")


def test_a_pg_dump_of_another_major_version_is_refused(conn: Connection, database_url: str) -> None:
    major = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one()) // 10000
    others = [p for p in baseline.pg_dump_candidates() if baseline.pg_dump_version(p) != major]
    with pytest.raises(MtmError, match=f"^no pg_dump for PostgreSQL {major - 40}; found "):
        baseline.find_pg_dump(major - 40)
    if others:
        with pytest.raises(MtmError, match=f"is not a pg_dump for PostgreSQL {major}"):
            baseline.baseline(database_url, "legacy_ref", pg_dump=others[0])


def test_find_pg_dump_with_nothing_found() -> None:
    with pytest.raises(MtmError, match=r"^no pg_dump for PostgreSQL 15; found none: install"):
        baseline.find_pg_dump(15, candidates=[])


DUMP = r"""
--
-- PostgreSQL database dump
--

\restrict AbCdEf

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);
SET default_table_access_method = heap;

CREATE SCHEMA "Acme";
ALTER SCHEMA "Acme" OWNER TO app;
COMMENT ON SCHEMA "Acme" IS 'the tenant';

CREATE TYPE "Acme".mood AS ENUM ('ok', 'Acme.not');
CREATE TABLE "Acme".t (
    id integer DEFAULT nextval('"Acme".t_id_seq'::regclass) NOT NULL,
    m "Acme".mood DEFAULT 'ok'::"Acme".mood,
    p integer REFERENCES public.plans(id),
    q text DEFAULT 'Acme.t is data'
);
ALTER TABLE "Acme".t OWNER TO app;
CREATE FUNCTION "Acme".f() RETURNS integer LANGUAGE sql AS $_$SELECT count(*) FROM "Acme".t$_$;
GRANT SELECT ON TABLE "Acme".t TO reader;
REVOKE ALL ON TABLE "Acme".t FROM PUBLIC;
COMMENT ON TABLE "Acme".t IS 'rows of "Acme"';

\unrestrict AbCdEf
"""


def test_neutralize_rewrites_code_only() -> None:
    sql, warnings = baseline.neutralize(DUMP, "Acme")
    assert sql.split("\n\n") == [
        "CREATE TYPE mood AS ENUM ('ok', 'Acme.not');",
        "CREATE TABLE t (\n"
        "    id integer DEFAULT nextval('t_id_seq'::regclass) NOT NULL,\n"
        "    m mood DEFAULT 'ok'::mood,\n"
        "    p integer REFERENCES public.plans(id),\n"
        "    q text DEFAULT 'Acme.t is data'\n"
        ");",
        'CREATE FUNCTION f() RETURNS integer LANGUAGE sql AS $_$SELECT count(*) FROM "Acme".t$_$;',
        "COMMENT ON TABLE t IS 'rows of \"Acme\"';\n",
    ]
    assert [w.split(": ", 1)[1] for w in warnings] == [
        "CREATE TYPE mood AS ENUM ('ok', 'Acme.not');",
        "CREATE TABLE t (",
        'CREATE FUNCTION f() RETURNS integer LANGUAGE sql AS $_$SELECT count(*) FROM "Acme".t$_$;',
    ]


def test_neutralize_plain_names_and_word_boundaries() -> None:
    dump = (
        "CREATE TABLE acme.t (a int);\n"
        "CREATE VIEW acme.v AS SELECT t.a, xacme.a FROM acme.t, public.acme xacme;\n"
        "ALTER TABLE ONLY acme.t ALTER COLUMN a SET DEFAULT nextval('acme.s'::regclass);\n"
        "SELECT E'it''s \\' acme.t';\n"
        "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA acme;\n"
        "SELECT pg_catalog.setval('acme.s', 3, true);\n"
    )
    sql, warnings = baseline.neutralize(dump, "acme")
    assert sql.split("\n\n") == [
        "CREATE TABLE t (a int);",
        "CREATE VIEW v AS SELECT t.a, xacme.a FROM t, public.acme xacme;",
        "ALTER TABLE ONLY t ALTER COLUMN a SET DEFAULT nextval('s'::regclass);",
        "SELECT E'it''s \\' acme.t';",
        "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA acme;",
        "SELECT pg_catalog.setval('s', 3, true);\n",
    ]
    assert [w.split(",", 1)[0] for w in warnings] == [
        "names schema 'acme' inside a string or function body",
        "names schema 'acme' as a schema",
    ]


def test_baseline_with_rows_of_named_tables(conn: Connection, database_url: str) -> None:
    conn.exec_driver_sql(
        "INSERT INTO public.plans VALUES (1);"
        "INSERT INTO legacy_ref.customers (email, plan_id) VALUES ('a@x', 1), ('it''s@x', NULL);"
    )
    made = baseline.baseline(
        database_url, "legacy_ref", ledger_table="mtm_migrations", data_tables=["customers"]
    )
    run_in(conn, "tenant_new", made.sql)
    query = "SELECT id, email, plan_id, note FROM {}.customers ORDER BY id"
    assert (
        conn.exec_driver_sql(query.format("tenant_new")).all()
        == conn.exec_driver_sql(query.format("legacy_ref")).all()
    )
    assert conn.exec_driver_sql("SELECT count(*) FROM tenant_new.invoices").scalar() == 0
    # the serial continues after the copied rows
    new_id = conn.exec_driver_sql(
        "INSERT INTO tenant_new.customers (email) VALUES ('c@x') RETURNING id"
    ).scalar()
    assert new_id == 3
    assert catalog.describe(conn, "tenant_new") == catalog.describe(
        conn, "legacy_ref", exclude=["mtm_migrations"]
    )


def test_rows_of_an_unknown_table_are_refused(conn: Connection, database_url: str) -> None:
    with pytest.raises(
        MtmError,
        match=r"^no table 'nope', 'mtm_migrations' in schema 'legacy_ref' to take rows from",
    ):
        baseline.baseline(
            database_url,
            "legacy_ref",
            ledger_table="mtm_migrations",
            data_tables=["customers", "nope", "mtm_migrations"],
        )
