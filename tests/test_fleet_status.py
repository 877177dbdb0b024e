"""``status`` at fleet size: a position worked out once per fingerprint, names and
domains read only where they are shown, ``--json`` written a tenant at a time. Each
tenant must still be shown exactly as a plan of its own showed it, including tenants
whose state row disagrees with their ledger."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace

import mtm
from conftest import Project
from mtm import commands, planner
from mtm.commands.base import session
from mtm.jsonout import dump_json
from mtm.migrations import discover
from mtm.registry import list_tenants
from mtm.report import LIST_LIMIT, status_table
from mtm.results import SchemaStatus, StatusResult
from mtm.rollout import ahead
from mtm.tables import existing

COUNT = LIST_LIMIT + 3  # large enough to be summarised


def _fleet(project: Project) -> None:
    """COUNT tenants at 0002 with a domain each; then 0003 is written and t00 alone
    migrated to it (ahead of the rest); t01-t04 have state rows that disagree with
    their ledgers in each way the planner tells apart."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    project.write("tenant", "0002_tags.sql", "ALTER TABLE items ADD COLUMN tag text;")
    config = project.config
    for i in range(COUNT):
        mtm.create(config, f"t{i:02d}", domains=[f"t{i:02d}.example.com"], name=f"T {i}")
    project.write("tenant", "0003_notes.sql", "CREATE TABLE notes (id int);")
    assert project.cli("migrate", "--tenant", "t00").exit_code == 0
    state = "public.mtm_migrations_state"
    # a fingerprint that matches no prefix of the files: planned from its ledger
    project.query(f"UPDATE {state} SET fingerprint = 'f00d' WHERE schema_name = 't01'")
    # the head's fingerprint over a ledger at 0002: the state row is trusted, as before
    project.query(
        f"UPDATE {state} SET fingerprint = (SELECT fingerprint FROM {state} "
        "WHERE schema_name = 't00') WHERE schema_name = 't02'"
    )
    # no state row at all
    project.query(f"DELETE FROM {state} WHERE schema_name = 't03'")
    # an edited migration, with the state row rewritten to agree with the ledger
    project.query("UPDATE t04.mtm_migrations SET checksum = 'f00d' WHERE name = '0001_items'")
    project.query(
        f"UPDATE {state} SET fingerprint = (SELECT md5(string_agg("
        "name || ':' || checksum, ',' ORDER BY name COLLATE \"C\")) FROM t04.mtm_migrations) "
        "WHERE schema_name = 't04'"
    )


def _one_plan_each(project: Project) -> list[SchemaStatus]:
    """The statuses as a plan per tenant made them (the reference)."""
    config = project.config
    mset = discover(config.migrations_directory)
    with session(config) as (_, conn):
        rows = planner.tenant_rows(conn, config, existing(conn, config), None)
        plans = planner.plans(conn, config, mset.tenant, "tenant", rows)
        info = {t.schema: (t.name, t.domains) for t in list_tenants(conn, config)}
    return [SchemaStatus.of(p, *info[p.schema]) for p in plans]


def test_statuses_are_those_of_a_plan_per_tenant(project: Project) -> None:
    _fleet(project)
    reference = _one_plan_each(project)
    by_schema = {s.schema: s for s in reference}
    assert by_schema["t00"].at_head and by_schema["t02"].at_head  # t02: its state row says so
    assert by_schema["t05"].pending == ["0003_notes"] and not by_schema["t05"].problems
    assert by_schema["t01"].pending == ["0003_notes"]  # from its ledger
    assert by_schema["t03"].pending == ["0003_notes"]
    assert by_schema["t04"].problems and "edited" in by_schema["t04"].problems[0]
    assert mtm.status(project.config).tenants == reference
    # without names: the same positions, and no name or domain read for a large fleet
    bare = commands.status(project.config, names=False).tenants
    assert [(s.name, s.domains) for s in bare] == [(None, ())] * COUNT
    unnamed = [replace(s, name=None, domains=()) for s in reference]
    assert bare == unnamed


def test_small_fleet_keeps_names_without_asking(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    mtm.create(project.config, "acme", domains=["acme.example.com"], name="Acme")
    (acme,) = commands.status(project.config, names=False).tenants
    assert (acme.name, acme.domains, acme.at_head) == ("Acme", ("acme.example.com",), True)


def test_cli_on_a_summarised_fleet(project: Project) -> None:
    _fleet(project)
    reference = {s.schema: s for s in _one_plan_each(project)}
    summary = project.cli("status")
    assert summary.exit_code == 0, summary.output
    assert f"{COUNT} tenants: 2 at head, {COUNT - 2} behind" in summary.output
    assert "disagree with their files" in summary.output
    assert "t04: migration 0001_items was edited" in summary.output
    assert "t05.example.com" not in summary.output  # summarised: no row per tenant
    listed = project.cli("status", "--all")
    assert "t05.example.com" in listed.output and "t00 (ahead)" in listed.output
    out = project.cli("status", "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert len(data["tenants"]) == COUNT
    for tenant in data["tenants"]:
        s = reference[tenant.pop("schema")]
        assert tenant == {
            "name": s.name,
            "domains": list(s.domains),
            "applied": s.applied,
            "total": s.total,
            "last_applied": s.last_applied,
            "pending": s.pending,
            "problems": s.problems,
            "ahead": s.schema in ("t00", "t02"),
        }
    assert data["summary"] == {"tenants": COUNT, "at_head": 2, "pending": True}
    assert data["ahead"] is not None


def _rendered(result: StatusResult) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=120, record=True)
    for renderable in status_table(result):
        console.print(renderable)
    return console.export_text()


def test_a_summarised_fleet_is_the_fleet_counted_by_the_server(project: Project) -> None:
    """``summarise``: positions with counts from one grouped query, and only the tenants
    at no prefix of the files read by name; the same groups, counts, problems, tenants
    ahead and table as the tenant-by-tenant path."""
    _fleet(project)
    config = project.config
    full = commands.status(config, names=False)
    short = commands.status(config, names=False, summarise=True)
    assert short.tenants == [] and short.summary is not None
    assert (short.groups(), short.counts(), short.pending) == (
        full.groups(),
        full.counts(),
        full.pending,
    )
    assert short.counts() == (COUNT, 2)
    # by name: t01 (a fingerprint of no prefix), t03 (no state row), t04 (edited ledger)
    assert sorted(t.schema for t, _ in short.positions() if t.schema) == ["t01", "t03", "t04"]
    problems = [p for t, _ in short.positions() for p in t.problems]
    assert problems == [p for t in full.tenants for p in t.problems] != []
    a, b = ahead(short.positions()), ahead(full.positions())
    assert a is not None and b is not None
    assert (a.bulk, a.bulk_count, a.positions) == (b.bulk, b.bulk_count, b.positions)
    assert _rendered(short) == _rendered(full)
    # a named tenant, or a fleet small enough to list: tenant by tenant
    assert commands.status(config, tenants=["t05"], summarise=True).summary is None
    for i in range(5, COUNT):
        project.query(f"DELETE FROM public.tenants WHERE schema_name = 't{i:02d}'")
    small = commands.status(config, names=False, summarise=True)
    assert small.summary is None and len(small.tenants) == 5


def test_dump_json_writes_an_iterator_as_the_list_it_stands_for() -> None:
    """Same document as for a list, and each item taken only when it is written."""
    taken: list[int] = []

    def items(n: int) -> Iterator[dict[str, int]]:
        for i in range(n):
            taken.append(i)
            yield {"i": i}

    class Sink(io.StringIO):
        sizes: list[int]

        def write(self, s: str) -> int:
            self.sizes.append(len(taken))
            return super().write(s)

    for n in (0, 1, 3, 5000):
        as_list, streamed = io.StringIO(), Sink()
        streamed.sizes = []
        dump_json({"tenants": [{"i": i} for i in range(n)], "after": {"n": n}}, as_list)
        taken.clear()
        dump_json({"tenants": items(n), "after": {"n": n}}, streamed)
        assert streamed.getvalue() == as_list.getvalue()
        assert len(taken) == n
    assert streamed.sizes[0] < 5000  # the first piece went out before the last item was made
