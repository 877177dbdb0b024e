"""``mtm diff --public``: the public schema against the public migrations applied in a
throwaway database, mtm's own tables (registry, ledger, state...) left out."""

from __future__ import annotations

import json
from collections.abc import Collection

import psycopg

import mtm
from conftest import Project, _libpq
from mtm import throwaway
from mtm.locks import THROWAWAY_LOCK_CLASS
from mtm.publicdrift import NOT_ASKED
from test_drift import make_fleet, references, setup

PLANS_V2 = "ALTER TABLE plans ADD COLUMN price_cents int NOT NULL DEFAULT 0;"


def throwaway_databases(project: Project, names: Collection[str] = ()) -> list[str]:
    """Throwaway databases made from this test's database, or among ``names`` (the
    server may be shared: others' are not looked at)."""
    here = project.scalar("SELECT current_database()")
    sql = (
        "SELECT datname FROM pg_database WHERE datname LIKE 'mtm\\_autogen\\_%%' "
        "AND (shobj_description(oid, 'pg_database') = %s OR datname = ANY(%s)) ORDER BY 1"
    )
    return [r[0] for r in project.query(sql, (throwaway.marker(here), list(names)))]


def test_without_public_the_output_says_why_in_one_line(project: Project) -> None:
    setup(project)
    make_fleet(project, ["acme"])
    project.query("ALTER TABLE public.plans ADD COLUMN hack int")  # not looked at
    result = project.cli("diff")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [NOT_ASKED, "1 tenant compared at 1 step: no differences"]
    assert mtm.diff(project.config).public is None


def test_a_clean_public_schema_at_its_step(project: Project) -> None:
    """Public is at step 1 while a second public migration is pending: the reference is
    built at step 1, and mtm's own tables (which the reference has too, empty) and the
    registry rows are not compared."""
    setup(project)
    make_fleet(project, ["acme"])
    project.write("public", "0002_price.sql", PLANS_V2)
    result = project.cli("diff", "--public")
    assert result.exit_code == 0, result.output
    assert "public schema at step 1 (0001_plans): no differences" in result.output.splitlines()
    assert throwaway_databases(project) == [] and references(project) == []


def test_hand_made_drift_in_public_is_named_and_exits_1(project: Project) -> None:
    setup(project)
    make_fleet(project, ["acme"])
    project.query("ALTER TABLE public.plans ADD COLUMN hack int")
    project.query("CREATE TABLE public.scratch (id int)")
    project.query("CREATE INDEX tenants_hand_idx ON public.tenants (schema_name)")  # mtm's
    result = project.cli("diff", "--public")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    start = lines.index("public schema at step 1 (0001_plans) differs:")
    details = lines[start + 1 : -1]
    # mtm's own tables are left out: the index made on the registry is not named
    assert details == [
        "  column plans.hack: extra",
        "  column scratch.id: extra",
        "  relation scratch: extra",
    ]
    assert lines[-1] == "1 tenant compared at 1 step: no differences"
    data = json.loads(project.cli("diff", "--public", "--json").output)
    assert data["ok"] is False and data["public"]["clean"] is False
    assert data["public"]["step"] == 1 and data["public"]["migration"] == "0001_plans"
    names = {d["name"] for d in data["public"]["differences"]}
    assert {"hack", "scratch"} <= names
    assert throwaway_databases(project) == []


def test_a_public_ledger_that_disagrees_with_the_files_is_not_compared(
    project: Project,
) -> None:
    setup(project)
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id bigint PRIMARY KEY);")
    result = project.cli("diff", "--public")
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if x.startswith("public schema")]
    assert line.startswith("public schema at step 1 (0001_plans): not compared: ")
    assert "0001_plans" in line[len("public schema at step 1 (0001_plans): not compared: ") :]


def test_throwaway_databases_left_by_killed_commands_are_dropped_when_provably_theirs(
    project: Project,
) -> None:
    """Made by hand as a killed command leaves them: the one whose marker names this
    database and whose lock is free is dropped (and said so); one of another database,
    one whose lock a live session holds, and one with no marker stay."""
    setup(project)
    here = project.scalar("SELECT current_database()")
    made = {
        "mtm_autogen_00000000000000a1": throwaway.marker(here),
        "mtm_autogen_00000000000000a2": throwaway.marker("another_app"),
        "mtm_autogen_00000000000000a3": throwaway.marker(here),
        "mtm_autogen_00000000000000a4": None,
    }
    try:
        for name, comment in made.items():
            project.query(f"CREATE DATABASE {name}")
            if comment is not None:
                project.query(f"COMMENT ON DATABASE {name} IS '{comment}'")
        with psycopg.connect(_libpq(project.url), autocommit=True) as live:
            key = f"{THROWAWAY_LOCK_CLASS}, hashtext('mtm_autogen_00000000000000a3')"
            live.execute(f"SELECT pg_advisory_lock({key})")
            result = project.cli("diff", "--public")
        assert result.exit_code == 0, result.output
        assert (
            "WARNING mtm.autogenerate: dropped mtm_autogen_00000000000000a1, a throwaway "
            "database left behind by a command that was killed"
        ) in result.output
        left = throwaway_databases(project, made)
        assert left == sorted(set(made) - {"mtm_autogen_00000000000000a1"})
    finally:
        for name in made:
            project.query(f"DROP DATABASE IF EXISTS {name}")
