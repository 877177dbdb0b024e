"""``mtm diff``: tenant schemas against a reference built at their step.

Fleets are made fast with mtm's own create script (registry row, schema, ledger, the
SQL migrations, state row) sent for 100 tenants per round trip, instead of one
``mtm create`` per tenant.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import psycopg
import pytest
from sqlalchemy.engine import make_url

import mtm
from conftest import Project, _libpq
from mtm import steps
from mtm.database import join_script
from mtm.migrations import discover
from mtm.publicdrift import NOT_ASKED
from mtm.references import REFERENCE_PREFIX

MIGRATIONS = {
    "0001_customers.sql": """
        CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL,
            email text NOT NULL UNIQUE, plan_id int REFERENCES public.plans (id));
        CREATE INDEX customers_name_idx ON customers (name);
    """,
    "0002_invoices.sql": """
        CREATE TYPE status AS ENUM ('draft', 'sent');
        CREATE TABLE invoices (id bigserial PRIMARY KEY,
            customer_id bigint NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
            amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
            status status NOT NULL DEFAULT 'draft');
        CREATE VIEW open_invoices AS SELECT id, amount_cents FROM invoices
            WHERE status = 'draft';
    """,
    "0003_touch.sql": """
        ALTER TABLE customers ADD COLUMN updated_at timestamptz DEFAULT now();
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql
            AS $$BEGIN NEW.updated_at = now(); RETURN NEW; END$$;
        CREATE TRIGGER customers_touch BEFORE UPDATE ON customers
            FOR EACH ROW EXECUTE FUNCTION touch();
    """,
}


def setup(project: Project, migrations: dict[str, str] = MIGRATIONS) -> None:
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id int PRIMARY KEY);")
    for name, sql in migrations.items():
        project.write("tenant", name, sql)
    result = project.cli("migrate")
    assert result.exit_code == 0, result.output


def make_fleet(project: Project, names: Sequence[str], step: int | None = None) -> None:
    """Create tenants at ``step`` (default: head) through mtm's own create script."""
    config = project.config
    migrations = discover(config.migrations_directory).tenant[:step]
    with psycopg.connect(_libpq(project.url), autocommit=True) as conn:
        for i in range(0, len(names), 100):
            script: list[str] = []
            for schema in names[i : i + 100]:
                body = [s for m in migrations for s in steps.create_body(config, schema, m)]
                script += steps.create(config, schema, None, []).around(body)
            conn.execute(join_script(script).encode(), prepare=False)


def references(project: Project) -> list[str]:
    """Reference schemas and state rows left behind (there should be none)."""
    schemas = [s for s in project.schemas() if s.startswith(REFERENCE_PREFIX)]
    rows = project.query(
        "SELECT schema_name FROM public.mtm_migrations_state WHERE schema_name LIKE %s",
        (REFERENCE_PREFIX + "%",),
    )
    return schemas + [r[0] for r in rows]


def test_a_clean_fleet_at_two_steps_exits_0_and_leaves_nothing(project: Project) -> None:
    setup(project)
    make_fleet(project, ["acme", "beta"])
    make_fleet(project, ["gamma"], step=2)
    result = project.cli("diff")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "3 tenants compared at 2 steps: no differences"
    assert references(project) == []
    data = json.loads(project.cli("diff", "--json").output)
    assert data["ok"] is True
    assert sorted(data["references"]) == ["2", "3"]
    groups = {g["step"]: g for g in data["groups"]}
    assert groups[3]["tenants"] == ["acme", "beta"]
    assert groups[3]["migration"] == "0003_touch"
    assert groups[2]["tenants"] == ["gamma"]
    assert all(g["clean"] and g["differences"] == [] for g in data["groups"])
    assert groups[3]["fingerprint"] == data["references"]["3"]


def test_tenants_made_by_mtm_create_and_python_migrations_are_clean(project: Project) -> None:
    """A Python migration runs in the reference as in a tenant (ctx.tenant is None)."""
    setup(project)
    project.write(
        "tenant",
        "0004_notes.py",
        """
        import sqlalchemy as sa

        def up(op, ctx):
            op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("body", sa.Text, server_default="x"))
            op.create_index("notes_body", "notes", ["body"])
        """,
    )
    for name in ("acme", "beta"):
        assert project.cli("create", name).exit_code == 0
    result = project.cli("diff")
    assert result.exit_code == 0, result.output
    assert "2 tenants compared at 1 step: no differences" in result.output


@pytest.mark.slow
def test_a_thousand_tenants_with_five_drifted_are_named_exactly(project: Project) -> None:
    """Three kinds of drift made by hand in five of 1,000 tenants: diff names exactly
    those five, grouped by what differs, and what differs."""
    setup(project)
    names = [f"t{i:04d}" for i in range(1000)]
    make_fleet(project, names[:900])
    make_fleet(project, names[900:], step=2)
    project.query(
        "DROP INDEX t0007.customers_name_idx; DROP INDEX t0123.customers_name_idx;"
        "ALTER TABLE t0333.customers ALTER COLUMN name TYPE varchar(200);"
        "ALTER TABLE t0444.customers ALTER COLUMN name TYPE varchar(200);"
        "CREATE TABLE t0950.extra (id int); CREATE TRIGGER extra_touch BEFORE UPDATE"
        " ON t0950.customers FOR EACH ROW EXECUTE FUNCTION t0007.touch()"
    )
    result = project.cli("diff", "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["ok"] is False and data["tenants_checked"] == 1000
    drifted = {tuple(g["tenants"]): g for g in data["groups"] if not g["clean"]}
    assert set(drifted) == {("t0007", "t0123"), ("t0333", "t0444"), ("t0950",)}

    def changes(tenants: tuple[str, ...]) -> list[tuple[str, ...]]:
        return [
            (d["kind"], d["parent"], d["name"], d["change"], d["attribute"] or "")
            for d in drifted[tenants]["differences"]
        ]

    assert changes(("t0007", "t0123")) == [
        ("index", "customers", "customers_name_idx", "missing", "")
    ]
    assert drifted[("t0007", "t0123")]["step"] == 3
    type_change = drifted[("t0333", "t0444")]["differences"]
    assert ("column", "customers", "name", "different", "type") in changes(("t0333", "t0444"))
    assert {"expected": "text", "actual": "character varying(200)"}.items() <= next(
        d for d in type_change if d["attribute"] == "type"
    ).items()
    extra = changes(("t0950",))
    assert ("relation", "", "extra", "extra", "") in extra
    assert ("column", "extra", "id", "extra", "") in extra
    assert ("trigger", "customers", "extra_touch", "extra", "") in extra
    assert drifted[("t0950",)]["step"] == 2
    clean = [g for g in data["groups"] if g["clean"]]
    assert sorted(len(g["tenants"]) for g in clean) == [99, 896]
    assert references(project) == []

    text = project.cli("diff").output.splitlines()
    assert "2 tenants at step 3 (0003_touch) differ: t0007, t0123" in text
    assert "  index customers.customers_name_idx: missing" in text
    assert "1 tenant at step 2 (0002_invoices) differs: t0950" in text
    assert text[-1] == "1,000 tenants compared at 2 steps: 5 differ (3 groups)"
    only = json.loads(project.cli("diff", "--json", "--tenant", "t0333").output)
    assert [g["tenants"] for g in only["groups"]] == [["t0333"]]


def test_a_locked_tenant_table_does_not_block_the_diff(project: Project) -> None:
    """Another session holds ACCESS EXCLUSIVE on a tenant's table: diff reads the catalog
    without waiting for it (any lock wait would fail at once: lock_timeout 1 ms)."""
    setup(project)
    make_fleet(project, ["acme", "beta"])
    project.query("DROP INDEX beta.customers_name_idx")
    with psycopg.connect(_libpq(project.url)) as holder:
        holder.execute("LOCK TABLE acme.customers, beta.invoices IN ACCESS EXCLUSIVE MODE")
        url = make_url(project.url).update_query_dict({"options": "-c lock_timeout=1"})
        result = project.run("--url", url.render_as_string(hide_password=False), "diff", "--json")
        still = holder.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
            "AND mode = 'AccessExclusiveLock' AND locktype = 'relation'"
        ).fetchone()
        holder.rollback()
    assert still is not None and still[0] >= 2  # the lock was held all along
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert [g["tenants"] for g in data["groups"] if not g["clean"]] == [["beta"]]


def test_a_failing_reference_build_leaves_nothing_behind(project: Project) -> None:
    """A tenant migration that cannot run any more (public.plans was dropped by hand):
    a line naming it, exit 1, and no reference schema or state row left."""
    setup(project)
    make_fleet(project, ["acme"])
    project.query("DROP TABLE public.plans CASCADE")
    result = project.cli("diff")
    assert result.exit_code == 1
    # the failed step is logged (at ERROR, like any failed step), then the one error line
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("ERROR mtm.step: step.failed: 0001_customers in mtm_reference_")
    assert len(lines) == 2, result.output
    assert lines[1].startswith(
        "error: the reference schema for step 3 could not be built: 0001_customers failed:"
    )
    assert 'relation "public.plans" does not exist' in lines[1]
    assert references(project) == []


def test_an_interrupted_diff_drops_the_reference(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the fingerprints are read: the reference is dropped all the same."""
    setup(project)
    make_fleet(project, ["acme"])
    from mtm import catalog

    seen: list[str] = []

    def interrupted(conn: object, schemas: list[str], **kwargs: object) -> None:
        seen.extend(s for s in schemas if s in project.schemas())
        raise KeyboardInterrupt

    monkeypatch.setattr(catalog, "fingerprints", interrupted)
    result = project.cli("diff")
    assert result.exit_code == 130
    assert seen[0] == "acme" and seen[1].startswith(REFERENCE_PREFIX)
    assert references(project) == []


def test_tenants_whose_ledgers_disagree_with_the_files_are_not_compared(
    project: Project,
) -> None:
    setup(project)
    make_fleet(project, ["acme", "beta"])
    (project.migrations / "tenant" / "0003_touch.sql").write_text(
        MIGRATIONS["0003_touch.sql"] + "\n-- edited", encoding="utf-8"
    )
    result = project.cli("diff")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    for name in ("acme", "beta"):
        assert any(
            line.startswith(f"not compared: {name}: migration 0003_touch was edited")
            for line in lines
        ), lines
    assert lines[-1] == "0 tenants compared at 0 steps: no differences; 2 problems"
    assert references(project) == []


def test_a_missing_schema_is_not_compared(project: Project) -> None:
    setup(project)
    make_fleet(project, ["acme", "gamma"])
    project.query("DROP SCHEMA gamma CASCADE")
    result = project.cli("diff")
    assert result.exit_code == 1
    assert "gamma: not compared: the schema does not exist" in result.output.splitlines()
    assert "1 tenant compared at 1 step: no differences; 1 problem" in result.output


def test_an_unknown_tenant_is_refused_in_one_line(project: Project) -> None:
    setup(project)
    make_fleet(project, ["acme"])
    result = project.cli("diff", "--tenant", "nobody")
    assert result.exit_code == 2
    assert result.output == "error: no tenant 'nobody' is registered\n"
    bad = project.cli("diff", "--tenant", "Bad Name")
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and bad.output.count("\n") == 1
    assert references(project) == []


def test_no_tenants_is_clean(project: Project) -> None:
    setup(project)
    result = project.cli("diff")
    assert result.exit_code == 0, result.output
    assert result.output == f"{NOT_ASKED}\n0 tenants compared at 0 steps: no differences\n"


def test_the_python_api_returns_the_groups(project: Project) -> None:
    setup(project)
    make_fleet(project, ["acme", "beta"])
    project.query("ALTER TABLE beta.customers ALTER COLUMN name SET DEFAULT 'x'")
    result = mtm.diff(project.config)
    assert not result.ok
    [group] = result.drifted
    assert group.tenants == ("beta",)
    assert [str(d) for d in group.differences] == [
        "column customers.name: default is \"'x'::text\", expected None"
    ]
    assert mtm.diff(project.config, tenants=["acme"]).ok


def test_validate_points_to_diff(project: Project) -> None:
    setup(project)
    result = project.cli("validate")
    assert "mtm diff" in result.output
    assert "mtm diff" in project.cli("validate", "--help").output


def test_concurrent_diffs_use_separate_references(project: Project) -> None:
    """Two diffs at once each build and drop their own reference."""
    setup(project)
    make_fleet(project, ["acme"])
    results: list[bool] = []

    def one() -> None:
        results.append(mtm.diff(project.config).ok)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True]
    assert references(project) == []


def test_a_tenant_that_moves_during_the_diff_gets_its_reference(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migrate that moves tenants to a new step after diff planned its references: the
    consistent read sees the new step, a reference is built for it, and the fleet is
    compared at the step it is really at."""
    setup(project)
    make_fleet(project, ["acme", "beta"], step=2)
    from mtm.references import References

    built: list[list[int]] = []
    original = References.build

    def build_then_migrate(self: References, steps: list[int]) -> None:
        built.append(sorted(steps))
        original(self, steps)
        if len(built) == 1:
            assert mtm.migrate(project.config).ok  # both tenants to step 3

    monkeypatch.setattr(References, "build", build_then_migrate)
    result = mtm.diff(project.config)
    assert built == [[2], [3]]
    assert result.ok, result
    assert [(g.step, g.tenants) for g in result.groups] == [(3, ("acme", "beta"))]
    assert references(project) == []
