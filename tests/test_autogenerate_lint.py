"""What ``mtm lint`` says of migrations ``mtm new --autogenerate`` writes.

A new table (with its indexes and foreign keys, built empty) passes lint. An index
added to a model of an existing table is written as ``CREATE INDEX CONCURRENTLY`` in a
no-transaction migration when the migration does nothing else, and passes; mixed with
other changes, or a foreign key added to an existing table, it is written as Alembic
renders it, flagged by lint, and the command's warning says why and what to do.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Project
from mtm import commands
from mtm.commands.autogenerate import new_from_models
from test_autogenerate import earlier, use_models

BASE = """
import sqlalchemy as sa

metadata = sa.MetaData()
plans = sa.Table("plans", metadata, sa.Column("id", sa.Integer, primary_key=True),
                 schema="public")
customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("plan_id", sa.Integer, sa.ForeignKey("public.plans.id")),
    sa.Index("ix_customers_email", "email"),
)
orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("note", sa.Text),
    sa.Index("ix_orders_customer", "customer_id"),
    {EXTRA}
)
"""


def generate(project: Project, extra: str = "", minutes: int = 0) -> tuple[str, list[str]]:
    use_models(project, BASE.replace("{EXTRA}", extra))
    made = new_from_models(project.config, "tenant", "change", now=earlier(minutes))
    assert made.path is not None
    return made.path.read_text(), made.warnings


def rules(project: Project) -> list[tuple[str, str]]:
    return [(f.migration, f.rule) for f in commands.lint(project.config).findings]


def test_new_tables_with_indexes_and_foreign_keys_pass_lint(project: Project) -> None:
    use_models(project, BASE.replace("{EXTRA}", ""))
    assert new_from_models(project.config, "public", "plans", now=earlier(3)).path
    text, warnings = generate(project, minutes=2)
    assert "op.create_index" in text and "sa.ForeignKeyConstraint" in text
    assert warnings == []
    assert rules(project) == []


def initial(project: Project) -> None:
    """Public and tenant migrations for BASE, applied, and a tenant with rows."""
    use_models(project, BASE.replace("{EXTRA}", ""))
    assert new_from_models(project.config, "public", "plans", now=earlier(3)).path
    generate(project, minutes=2)
    assert project.cli("migrate").exit_code == 0
    assert project.cli("create", "acme").exit_code == 0
    project.query("INSERT INTO acme.customers (id, email) VALUES (1, 'a@example.com')")
    project.query("INSERT INTO acme.orders (id, customer_id, note) VALUES (1, 1, 'n')")


def test_an_index_alone_on_an_existing_table_is_built_concurrently_and_passes(
    project: Project,
) -> None:
    initial(project)
    text, warnings = generate(project, 'sa.Index("ix_orders_note", "note"),', minutes=1)
    assert warnings == []
    assert "\ntransactional = False\n" in text
    assert (
        "op.create_index('ix_orders_note', 'orders', ['note'], unique=False, "
        "postgresql_concurrently=True, if_not_exists=True)"
    ) in text
    assert (
        "op.drop_index('ix_orders_note', table_name='orders', postgresql_concurrently=True, "
        "if_exists=True)"
    ) in text
    assert rules(project) == []
    # It runs, outside a transaction, on the tenant that has rows; and its down too.
    assert project.cli("migrate").exit_code == 0
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'acme.ix_orders_note'::regclass"
    assert project.scalar(valid) is True
    assert project.cli("down", "--all-tenants").exit_code == 0
    assert project.scalar("SELECT to_regclass('acme.ix_orders_note')") is None


def test_an_index_with_other_changes_and_a_foreign_key_are_flagged_with_the_reason(
    project: Project,
) -> None:
    initial(project)
    extra = (
        'sa.Index("ix_orders_note", "note"), '
        'sa.Column("referrer_id", sa.Integer, sa.ForeignKey("customers.id", '
        'name="orders_referrer_fk")),'
    )
    result = project.run("new", "tenant", "mixed", "--autogenerate", timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("nothing to change")
    use_models(project, BASE.replace("{EXTRA}", extra))
    result = project.run("new", "tenant", "mixed", "--autogenerate", timeout=300)
    assert result.returncode == 0, result.stderr
    text = Path(result.stdout.strip()).read_text()
    assert "transactional" not in text and "concurrently" not in text
    name = Path(result.stdout.strip()).stem
    assert sorted(rules(project)) == [
        (name, "foreign-key-validated"),
        (name, "index-not-concurrent"),
    ]
    stderr = result.stderr
    assert (
        "warning: index ix_orders_note on the existing table orders is built under a lock "
        "(lint: index-not-concurrent) because this migration also makes other changes"
    ) in stderr
    assert (
        "warning: foreign key orders_referrer_fk on the existing table orders checks every "
        "row under a lock (lint: foreign-key-validated)"
    ) in stderr
