"""validate reads most ledgers only as the server's fingerprint of them: every way of
editing a ledger by hand that could pass for a good one must still be reported."""

from __future__ import annotations

import json

import pytest

from conftest import Project
from mtm import ledgerscan


def _fleet(project: Project) -> None:
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id int);")
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    project.write("tenant", "0002_orders.sql", "CREATE TABLE orders (id int);")
    for schema in ("acme", "globex", "initech"):
        assert project.cli("create", schema).exit_code == 0
    assert project.cli("migrate").exit_code == 0


def _problems(project: Project) -> list[str]:
    r = project.cli("validate", "--json")
    data = json.loads(r.output)
    assert r.exit_code == (0 if not data["problems"] else 1)
    return list(data["problems"])


def _checksum(project: Project, schema: str, name: str) -> str:
    return str(
        project.scalar(f"SELECT checksum FROM {schema}.mtm_migrations WHERE name = %s", (name,))
    )


def test_checksum_edited_in_the_ledger_only(project: Project) -> None:
    """The state row still has the old fingerprint: both the edit and the disagreement."""
    _fleet(project)
    project.query("UPDATE globex.mtm_migrations SET checksum = 'f00d' WHERE name = '0002_orders'")
    problems = _problems(project)
    assert len(problems) == 2, problems
    assert problems[0].startswith("globex: migration 0002_orders was edited after it was applied")
    assert problems[1] == (
        "globex: state summary disagrees with the ledger (run 'mtm migrate' to rewrite it)"
    )


def test_edit_with_the_state_row_rewritten_to_match(project: Project) -> None:
    """A hand edit that also rewrote the summary agrees with it, but not with the files."""
    _fleet(project)
    project.query("UPDATE acme.mtm_migrations SET checksum = 'f00d' WHERE name = '0001_items'")
    project.query(
        "UPDATE public.mtm_migrations_state SET fingerprint = (SELECT md5(string_agg("
        "name || ':' || checksum, ',' ORDER BY name COLLATE \"C\")) FROM acme.mtm_migrations) "
        "WHERE schema_name = 'acme'"
    )
    problems = _problems(project)
    assert len(problems) == 1 and problems[0].startswith(
        "acme: migration 0001_items was edited after it was applied"
    ), problems


def test_rows_merged_into_one_with_the_same_fingerprint_text(project: Project) -> None:
    """Two rows rewritten as one whose 'name:checksum' text is the text of both: the
    fingerprint (and so the state row) is unchanged, the ledger is not."""
    _fleet(project)
    first, second = (_checksum(project, "initech", n) for n in ("0001_items", "0002_orders"))
    project.query("DELETE FROM initech.mtm_migrations")
    project.query(
        "INSERT INTO initech.mtm_migrations (name, checksum) VALUES (%s, %s)",
        (f"0001_items:{first},0002_orders", second),
    )
    assert project.scalar(
        "SELECT fingerprint FROM public.mtm_migrations_state WHERE schema_name = 'initech'"
    ) == project.scalar(
        "SELECT md5(string_agg(name || ':' || checksum, ',')) FROM initech.mtm_migrations"
    )
    problems = _problems(project)
    merged = f"0001_items:{first},0002_orders"
    assert problems == [
        f"initech: applied migration {merged} has no file",
        f"initech: migration 0001_items sorts before {merged}, which is already applied "
        "(use --allow-out-of-order to apply it anyway)",
    ]


def test_a_row_removed_by_hand_with_its_summary(project: Project) -> None:
    """A ledger that is a shorter prefix of the files, summary rewritten to match: the
    schema is simply behind (as the full ledger says), no problem and no false alarm."""
    _fleet(project)
    project.query("DELETE FROM acme.mtm_migrations WHERE name = '0002_orders'")
    project.query(
        "UPDATE public.mtm_migrations_state SET fingerprint = (SELECT md5(string_agg("
        "name || ':' || checksum, ',' ORDER BY name COLLATE \"C\")) FROM acme.mtm_migrations) "
        "WHERE schema_name = 'acme'"
    )
    assert _problems(project) == []
    r = project.cli("status", "--json")
    acme = next(t for t in json.loads(r.output)["tenants"] if t["schema"] == "acme")
    assert acme["pending"] == ["0002_orders"]


@pytest.mark.parametrize("edited", ["acme", "globex", "initech"])
def test_ledgers_read_on_two_connections(
    project: Project, monkeypatch: pytest.MonkeyPatch, edited: str
) -> None:
    """One ledger a query: half of them on a second connection; an edit is found on either."""
    _fleet(project)
    monkeypatch.setattr(ledgerscan, "BATCH", 1)
    assert _problems(project) == []
    project.query(f"UPDATE {edited}.mtm_migrations SET checksum = 'f00d' WHERE name = '0001_items'")
    problems = _problems(project)
    assert [p.split(":")[0] for p in problems] == [edited, edited], problems
