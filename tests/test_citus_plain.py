"""The Citus features on a server without Citus: reference-table directives and
``op.create_reference_table`` do nothing (the same migrations run on both), status shows
no nodes, move and rebalance refuse; and the parts that need no server at all (reading
directives and tenant migrations' foreign keys to public)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Project
from mtm.migrations import discover
from mtm.reference import made_reference, public_keys

PLANS = "CREATE TABLE plans (id int PRIMARY KEY);\n-- mtm:reference-table plans\n"
CURRENCIES = """
import sqlalchemy as sa


def up(op):
    op.create_table("currencies", sa.Column("code", sa.Text, primary_key=True))
    op.create_reference_table("currencies")
"""


@pytest.fixture
def plain(request: pytest.FixtureRequest, project: Project) -> Project:
    if request.config.getoption("--citus"):
        pytest.skip("checks a server without Citus; test_citus_*.py check the cluster")
    return project


def test_reference_tables_are_plain_tables_on_a_server_without_citus(plain: Project) -> None:
    plain.write("public", "0001_plans.sql", PLANS)
    plain.write("public", "0002_currencies.py", CURRENCIES)
    plain.write(
        "tenant",
        "0001_orders.sql",
        "CREATE TABLE orders (id int PRIMARY KEY, plan_id int REFERENCES public.plans, "
        "currency text REFERENCES public.currencies);",
    )
    result = plain.run("-vv", "--log-format", "json", "migrate")
    assert result.returncode == 0, result.stderr
    skipped = [
        e for e in map(json.loads, result.stderr.splitlines()) if e["event"] == "reference.skipped"
    ]
    assert [(e["level"], e["table"]) for e in skipped] == [
        ("DEBUG", "plans"),
        ("DEBUG", "currencies"),
    ]
    assert plain.cli("create", "acme").exit_code == 0
    plain.query("INSERT INTO public.plans VALUES (1)")
    plain.query("INSERT INTO acme.orders VALUES (1, 1, NULL)")
    assert plain.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'citus'") == 0


def test_status_shows_no_nodes_and_move_and_rebalance_refuse(plain: Project) -> None:
    plain.write("tenant", "0001_items.sql", "CREATE TABLE items (id int PRIMARY KEY);")
    assert plain.cli("create", "acme").exit_code == 0
    status = json.loads(plain.cli("status", "--json").output)
    assert "node" not in status["tenants"][0]
    text = plain.cli("status").output
    assert "node" not in text and "tenants per node" not in text
    moved = plain.cli("move", "acme", "--to", "127.0.0.1:5432")
    assert moved.exit_code == 2
    assert "error: mtm move needs a Citus cluster: this database has no citus extension" in (
        moved.output
    )
    rebalanced = plain.cli("rebalance")
    assert rebalanced.exit_code == 2
    assert "error: mtm rebalance needs a Citus cluster" in rebalanced.output


def test_sql_shows_what_a_directive_runs(project: Project) -> None:
    project.write("public", "0001_plans.sql", PLANS)
    result = project.cli("sql", "0001_plans", "--public")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE plans (id int PRIMARY KEY);" in result.output
    assert "PERFORM create_reference_table('public.\"plans\"')" in result.output
    assert "WHERE extname = 'citus'" in result.output


@pytest.mark.parametrize(
    ("namespace", "text", "message"),
    [
        (
            "tenant",
            "CREATE TABLE t (id int);\n-- mtm:reference-table t\n",
            "'-- mtm:reference-table' belongs in a public migration",
        ),
        (
            "public",
            "-- mtm:no-transaction\nCREATE TABLE t (id int);\n-- mtm:reference-table t\n",
            "'-- mtm:reference-table' needs the migration's transaction",
        ),
        (
            "public",
            "CREATE TABLE t (id int);\n-- mtm:reference-table other.t\n",
            "'-- mtm:reference-table' takes the names of public tables (lowercase, separated "
            "by commas); got 'other.t'",
        ),
    ],
)
def test_a_directive_where_it_cannot_work_is_refused(
    tmp_path: Path, namespace: str, text: str, message: str
) -> None:
    folder = tmp_path / "migrations" / namespace
    folder.mkdir(parents=True)
    (folder / "0001_t.sql").write_text(text)
    with pytest.raises(Exception, match="reference-table") as refused:
        discover(tmp_path / "migrations")
    assert message in str(refused.value)
    assert str(folder / "0001_t.sql") in str(refused.value)


def test_foreign_keys_to_public_and_reference_tables_are_read_from_migrations(
    tmp_path: Path,
) -> None:
    root = tmp_path / "migrations"
    (root / "tenant").mkdir(parents=True)
    (root / "public").mkdir()
    (root / "tenant" / "0001_a.sql").write_text(
        "CREATE TABLE a (id int PRIMARY KEY, p int REFERENCES public.plans (id), "
        "l int REFERENCES local_table, c text, FOREIGN KEY (c) REFERENCES public.currencies);\n"
        'ALTER TABLE a ADD CONSTRAINT r FOREIGN KEY (c) REFERENCES "public".regions (code);\n'
    )
    (root / "public" / "0001_p.sql").write_text(PLANS)
    (root / "public" / "0002_c.py").write_text(CURRENCIES)
    (root / "public" / "0003_x.sql").write_text("SELECT create_reference_table('public.extra');")
    (root / "public" / "0004_y.sql").write_text("CREATE TABLE y (id int);\n")
    mset = discover(root)
    keys = public_keys(mset.tenant[0])
    assert [(k.migration, k.table, k.target) for k in keys] == [
        ("0001_a", "a", "plans"),
        ("0001_a", "a", "currencies"),
        ("0001_a", "a", "regions"),
    ]
    assert made_reference(mset.public) == {"plans", "currencies", "extra"}
