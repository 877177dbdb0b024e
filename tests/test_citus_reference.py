"""Public tables tenants reference, on a Citus cluster: public migrations make them
reference tables (a SQL directive, ``op.create_reference_table``), and a tenant
migration whose foreign key to a public table would fail on the cluster is refused
before anything runs, naming the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Project, make_project

pytestmark = pytest.mark.citus

PLANS = """
CREATE TABLE plans (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO plans VALUES (1, 'free');
-- mtm:reference-table plans
"""
CURRENCIES = """
import sqlalchemy as sa


def up(op):
    op.create_table("currencies", sa.Column("code", sa.Text, primary_key=True))
    op.create_reference_table("currencies")
"""
ORDERS = """
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    plan_id int NOT NULL REFERENCES public.plans (id),
    currency text REFERENCES public.currencies
);
"""
REGIONS = """
import sqlalchemy as sa


def up(op):
    op.add_column("orders", sa.Column("region", sa.Text))
    op.create_foreign_key("orders_region", "orders", "regions", ["region"], ["code"],
                          referent_schema="public")
"""


def citus_type(project: Project, table: str) -> str | None:
    return project.scalar(  # type: ignore[no-any-return]
        "SELECT citus_table_type FROM citus_tables WHERE table_name = %s::regclass", (table,)
    )


def applied(project: Project, tenant: str) -> int:
    ledger = project.config.migrations_table
    return project.scalar(f"SELECT count(*) FROM {tenant}.{ledger}")  # type: ignore[no-any-return]


def test_public_tables_tenants_reference_are_made_reference_tables_or_the_run_is_refused(
    tmp_path: Path, citus_url: str
) -> None:
    project = make_project(tmp_path / "app", citus_url)
    project.write("public", "0001_plans.sql", PLANS)
    project.write("public", "0002_currencies.py", CURRENCIES)
    project.write("public", "0003_countries.sql", "CREATE TABLE countries (code text PRIMARY KEY);")
    project.write("public", "0004_regions.sql", "CREATE TABLE regions (code text PRIMARY KEY);")
    assert project.cli("migrate").exit_code == 0
    assert citus_type(project, "public.plans") == "reference"
    assert citus_type(project, "public.currencies") == "reference"
    assert citus_type(project, "public.countries") is None
    assert project.scalar("SELECT name FROM public.plans") == "free"
    for tenant in ("acme", "globex"):
        assert project.cli("create", tenant).exit_code == 0
        project.query("SELECT citus_schema_distribute(%s)", (tenant,))

    # Keys to reference tables: they hold on the tenants' nodes.
    project.write("tenant", "0001_orders.sql", ORDERS)
    result = project.cli("migrate")
    assert result.exit_code == 0, result.output
    project.query("INSERT INTO acme.orders VALUES (1, 1, NULL)")
    with pytest.raises(Exception, match="foreign key"):
        project.query("INSERT INTO globex.orders VALUES (1, 2, NULL)")

    # A key to a plain public table: refused before anything runs, the table named.
    project.write(
        "tenant",
        "0002_country.sql",
        "ALTER TABLE orders ADD COLUMN country text REFERENCES public.countries (code);",
    )
    project.write("public", "0005_notes.sql", "CREATE TABLE notes (id int PRIMARY KEY);")
    refused = project.cli("migrate")
    assert refused.exit_code == 2, refused.output
    assert (
        "error: tenant migration 0002_country adds a foreign key from orders to "
        "public.countries, which is not a reference table: on a Citus cluster that key "
        "would fail on the tenant's node. Make it one in a public migration first "
        "('-- mtm:reference-table countries' in SQL, op.create_reference_table(\"countries\")"
        " in Python); nothing was run"
    ) in refused.output
    assert project.scalar("SELECT to_regclass('public.notes')") is None  # public did not run
    assert [applied(project, t) for t in ("acme", "globex")] == [1, 1]

    # A pending public migration that makes it a reference table (a file of only the
    # directive) lets the run go: public runs first.
    project.write("public", "0006_countries_everywhere.sql", "-- mtm:reference-table countries\n")
    result = project.cli("migrate")
    assert result.exit_code == 0, result.output
    assert citus_type(project, "public.countries") == "reference"
    assert [applied(project, t) for t in ("acme", "globex")] == [2, 2]

    # A Python migration's key is read from its SQL as rendered.
    project.write("tenant", "0003_regions.py", REGIONS)
    refused = project.cli("migrate")
    assert refused.exit_code == 2
    assert "tenant migration 0003_regions adds a foreign key from orders to public.regions" in (
        refused.output
    )
    assert [applied(project, t) for t in ("acme", "globex")] == [2, 2]

    # A create that makes a distributed schema is checked the same way, and creates nothing.
    database = project.scalar("SELECT current_database()")
    project.query(f'ALTER DATABASE "{database}" SET citus.enable_schema_based_sharding TO on')
    refused = project.cli("create", "newco")
    assert refused.exit_code == 2
    assert "tenant migration 0003_regions adds a foreign key" in refused.output
    assert project.scalar("SELECT to_regnamespace('newco')") is None
    assert project.scalar("SELECT count(*) FROM public.tenants") == 2
