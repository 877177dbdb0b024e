"""Fleet behaviour on a real server: parallel rollout, failure policy, the no-op path,
machine-readable output, and that a tenant created at head equals a migrated one."""

from __future__ import annotations

import io
import json
from typing import Any

import psycopg
import pytest
from rich.console import Console

import mtm
from conftest import Project, _libpq
from mtm.migrations import discover
from mtm.pipeline import DEPTH
from mtm.plan import fingerprint
from mtm.report import LiveProgress
from mtm.results import SchemaResult

# A tenant migration that fails, for the schemas listed in public.poison, at a clean
# point: after it has already changed something, so a rollback has work to do.
POISONED = """
CREATE TABLE notes (id int PRIMARY KEY);
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM public.poison WHERE schema_name = current_schema()) THEN
    RAISE EXCEPTION 'poisoned tenant %', current_schema();
  END IF;
END $$;
"""


def _fleet(project: Project, count: int, *, poisoned: tuple[str, ...] = ()) -> list[str]:
    """``count`` tenants t00, t01, ... registered without migrations; three tenant
    migrations, the second of which fails in the ``poisoned`` schemas."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int PRIMARY KEY);")
    project.write("tenant", "0002_notes.sql", POISONED)
    project.write("tenant", "0003_tags.sql", "ALTER TABLE items ADD COLUMN tag text;")
    project.query("CREATE TABLE public.poison (schema_name text)")
    project.query("INSERT INTO public.poison SELECT unnest(%s::text[])", (list(poisoned),))
    config = project.config
    names = [f"t{i:02d}" for i in range(count)]
    for name in names:
        mtm.create(config, name, migrate=False)
    return names


def _applied(project: Project) -> dict[str, list[str]]:
    """Every tenant's ledger, name order."""
    out: dict[str, list[str]] = {}
    for (schema,) in project.query("SELECT schema_name FROM tenants ORDER BY 1"):
        out[schema] = [
            r[0]
            for r in project.query(
                f'SELECT name FROM "{schema}".mtm_migrations ORDER BY name COLLATE "C"'
            )
        ]
    return out


HEAD = ["0001_items", "0002_notes", "0003_tags"]


def test_parallel_migrate_reaches_head_one_connection_per_tenant(project: Project) -> None:
    project.write("public", "0001_seen.sql", "CREATE TABLE seen (schema_name text, pid int);")
    for i, name in enumerate(("0001_a", "0002_b", "0003_c")):
        project.write(
            "tenant",
            f"{name}.sql",
            f"CREATE TABLE {name[5:]} (id int);\n"
            "INSERT INTO public.seen SELECT current_schema(), pg_backend_pid() "
            f"FROM pg_sleep({0.01 if i == 0 else 0});",
        )
    config = project.config
    for i in range(16):  # four per worker spread them over several
        mtm.create(config, f"p{i:02d}", migrate=False)
    r = project.cli("migrate", "--jobs", "4")
    assert r.exit_code == 0, r.output
    assert "49 steps applied" in r.output  # 48 + public
    assert project.scalar("SELECT count(*) FROM seen") == 48
    # Every tenant's three migrations ran on one connection, in order ...
    assert (
        project.scalar(
            "SELECT max(n) FROM (SELECT count(DISTINCT pid) n FROM seen GROUP BY schema_name) x"
        )
        == 1
    )
    # ... and the fleet went over more than one.
    assert project.scalar("SELECT count(DISTINCT pid) FROM seen") > 1
    head = fingerprint((m.name, m.checksum) for m in discover(project.migrations).tenant)
    assert (
        project.scalar(
            "SELECT count(*) FROM mtm_migrations_state WHERE namespace = 'tenant' "
            "AND fingerprint = %s",
            (head,),
        )
        == 16
    )
    r = project.cli("migrate", "--jobs", "4")
    assert r.exit_code == 0 and "nothing to do" in r.output, r.output


def test_first_failure_stops_new_tenants(project: Project) -> None:
    names = _fleet(project, 20, poisoned=("t05",))
    r = project.cli("migrate", "--jobs", "2")
    assert r.exit_code == 1, r.output
    assert "FAILED t05: migration 0002_notes: poisoned tenant t05" in r.output
    assert "not started" in r.output
    applied = _applied(project)
    # The failed tenant is at a clean step: 0001 applied, 0002 rolled back whole.
    assert applied["t05"] == ["0001_items"]
    assert project.scalar("SELECT to_regclass('t05.notes')") is None
    # No tenant started after the failure; the few that were running (or sent, in a
    # worker's pipeline) finished. Which ones depends on timing: at most a pipeline's
    # worth of steps per worker past t05, and the other worker's next plan.
    touched = [s for s in names if applied[s]]
    reach = 6 + 2 * (DEPTH + 1)
    assert "t05" in touched and set(touched) <= set(names[:reach])
    for s in touched:
        if s != "t05":
            assert applied[s] == HEAD, s
    assert all(applied[s] == [] for s in names[reach:])


def test_continue_on_error_migrates_the_rest_and_rerun_picks_up(project: Project) -> None:
    names = _fleet(project, 16, poisoned=("t03", "t11"))
    r = project.cli("migrate", "--jobs", "3", "--continue-on-error")
    assert r.exit_code == 1, r.output
    assert "FAILED t03: migration 0002_notes: poisoned tenant t03" in r.output
    assert "FAILED t11: migration 0002_notes: poisoned tenant t11" in r.output
    assert "2 failed" in r.output
    applied = _applied(project)
    assert applied["t03"] == applied["t11"] == ["0001_items"]
    assert all(applied[s] == HEAD for s in names if s not in ("t03", "t11"))

    project.query("DELETE FROM poison")
    r = project.cli("migrate", "--jobs", "3", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["ok"] and out["steps"] == 4 and out["tenants_migrated"] == 2
    assert all(v == HEAD for v in _applied(project).values())


def test_migrate_json_shape_on_failure(project: Project) -> None:
    _fleet(project, 4, poisoned=("t01", "t02"))
    r = project.cli("migrate", "--jobs", "1", "--continue-on-error", "--json")
    assert r.exit_code == 1
    out: dict[str, Any] = json.loads(r.stdout)  # stderr: the failed steps' ERROR records
    assert out["ok"] is False and out["dry_run"] is False
    assert out["tenants_total"] == 4 and out["tenants_pending"] == 4
    assert out["tenants_migrated"] == 2 and out["steps"] == 2 * 3 + 2
    assert out["not_started"] == 0 and out["interrupted"] is False
    assert sorted((f["schema"], f["migration"]) for f in out["failures"]) == [
        ("t01", "0002_notes"),
        ("t02", "0002_notes"),
    ]
    assert all("poisoned tenant" in f["error"] for f in out["failures"])
    assert isinstance(out["seconds"], float)


def test_noop_migrate_and_status_never_read_tenant_ledgers(project: Project) -> None:
    _fleet(project, 6)
    assert project.cli("migrate", "--jobs", "2").exit_code == 0
    # Lock every tenant ledger from another session: a run that reads one would wait for
    # the lock and fail on lock_timeout. The no-op path answers from the state table.
    with psycopg.connect(_libpq(project.url)) as holder:
        for (schema,) in project.query("SELECT schema_name FROM tenants"):
            holder.execute(f'LOCK TABLE "{schema}".mtm_migrations IN ACCESS EXCLUSIVE MODE')
        env = {"PGOPTIONS": "-c lock_timeout=2s"}
        r = project.run("migrate", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "nothing to do: public and 6 tenants at head" in r.stdout
        r = project.run("status", "--json", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["summary"] == {"tenants": 6, "at_head": 6, "pending": False}
        holder.rollback()
    # A missing summary row is read from that one ledger and written again.
    project.query("DELETE FROM mtm_migrations_state WHERE schema_name = 't02'")
    r = project.cli("migrate")
    assert r.exit_code == 0 and "nothing to do" in r.output, r.output
    assert project.scalar("SELECT applied FROM mtm_migrations_state WHERE schema_name = 't02'") == 3
    assert project.cli("validate").exit_code == 0


# --- create at head == create, then migrate ----------------------------------------------

CATALOG = {
    "relations": """
        SELECT c.relname, c.relkind::text, c.relpersistence::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(s)s ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.attidentity::text, a.attgenerated::text,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = %(s)s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2""",
    "constraints": """
        SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = k.connamespace
        WHERE n.nspname = %(s)s ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = %(s)s ORDER BY 1, 2""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, last_value
        FROM pg_sequences WHERE schemaname = %(s)s ORDER BY 1""",
    "ledger": "SELECT name, checksum FROM {ledger} ORDER BY 1",
    "data": "SELECT key, value::text FROM {settings} ORDER BY 1",
}


def _catalog(project: Project, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for key, sql in CATALOG.items():
        sql = sql.format(ledger=f'"{schema}".mtm_migrations', settings=f'"{schema}".settings')
        rows = project.query(sql, {"s": schema})
        # Definitions name the schema where it is not on the search_path; drop it.
        out[key] = [
            tuple(v.replace(f"{schema}.", "S.") if isinstance(v, str) else v for v in row)
            for row in rows
        ]
    return out


def test_created_at_head_equals_created_then_migrated(project: Project) -> None:
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id serial PRIMARY KEY);")
    project.write(
        "tenant",
        "0001_customers.sql",
        """
        CREATE TABLE customers (
            id bigserial PRIMARY KEY,
            email text NOT NULL UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    )
    project.write(
        "tenant",
        "0002_invoices.sql",
        """
        CREATE TABLE invoices (
            id bigserial PRIMARY KEY,
            customer_id bigint NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
            amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
            status text NOT NULL DEFAULT 'draft',
            meta jsonb NOT NULL DEFAULT '{}'::jsonb,
            id2 int GENERATED ALWAYS AS IDENTITY
        );
        CREATE INDEX invoices_open_idx ON invoices (customer_id) WHERE status <> 'paid';
        """,
    )
    project.write(
        "tenant",
        "0003_settings.py",
        '''
        import sqlalchemy as sa


        def up(op):
            op.create_table("settings", sa.Column("key", sa.Text, primary_key=True),
                            sa.Column("value", sa.JSON, nullable=False))
            op.add_column("customers", sa.Column("archived", sa.Boolean,
                          server_default=sa.false(), nullable=False))
            op.execute("""INSERT INTO settings VALUES ('currency', '"USD"')""")


        def down(op):
            op.drop_table("settings")
        ''',
    )
    project.write(
        "tenant",
        "0004_status_check.sql",
        "ALTER TABLE invoices ADD CONSTRAINT invoices_status_check "
        "CHECK (status IN ('draft', 'sent', 'paid'));\n"
        "ALTER TABLE customers DROP COLUMN created_at;",
    )
    assert project.cli("migrate").exit_code == 0
    r = project.cli("create", "at_head")
    assert r.exit_code == 0, r.output
    r = project.cli("create", "stepwise", "--no-migrate")
    assert r.exit_code == 0, r.output
    r = project.cli("migrate")
    assert r.exit_code == 0, r.output
    assert "4 steps applied" in r.output
    a, b = _catalog(project, "at_head"), _catalog(project, "stepwise")
    assert a["relations"] and a["columns"] and a["constraints"] and a["indexes"]
    assert a["data"] == [("currency", '"USD"')]
    for key in CATALOG:
        assert a[key] == b[key], key
    states = dict(project.query("SELECT schema_name, fingerprint FROM mtm_migrations_state"))
    assert states["at_head"] == states["stepwise"]


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_jobs_must_be_positive(project: Project, jobs: str) -> None:
    r = project.cli("migrate", "--jobs", jobs)
    assert r.exit_code == 2
    assert "--jobs must be at least 1" in r.output


def test_live_view_keeps_failures_in_80_columns() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    live = LiveProgress(console)
    live.begin(10_000, 20_000)
    for worker in range(3):
        live.step(worker, f"t{worker:05d}", "0011_invoice_currency")
    failed = SchemaResult("t00000", "tenant", failed_migration="0011_invoice_currency")
    failed.error = "boom"
    live.schema_done(0, failed)
    live.schema_done(1, SchemaResult("t00001", "tenant", applied=["0011_invoice_currency"]))
    live.end()
    text = out.getvalue()
    assert "2/10,000 schemas  1 failed" in text
    assert "1/20,000 steps" in text and "ETA" in text
    assert "worker 3: t00002 -> 0011_invoice_currency" in text
    assert "FAILED t00000 at 0011_invoice_currency: boom" in text
