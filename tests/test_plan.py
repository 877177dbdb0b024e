"""plan.py without a database: fingerprints, ledgers against files, down ranges.

The planner decides what runs where from numbers alone, so its rules are tried here
directly, with generated histories where a property says more than an example.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtm.migrations import Migration
from mtm.plan import (
    LedgerRow,
    SchemaPlan,
    fingerprint,
    plan_from_ledger,
    plan_from_prefix,
    prefix_fingerprints,
    revert_range,
)


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _migration(name: str, body: str | None = None) -> Migration:
    return Migration(
        name=name,
        namespace="tenant",
        path=Path("migrations/tenant") / f"{name}.sql",
        checksum=_checksum(body if body is not None else f"CREATE TABLE {name} ();"),
        kind="sql",
    )


def _files(*names: str) -> list[Migration]:
    return [_migration(n) for n in names]


def _ledger(migrations: list[Migration]) -> list[LedgerRow]:
    return [LedgerRow(m.name, m.checksum) for m in migrations]


# Distinct migration names, sorted as files run; the alphabet includes characters whose
# order differs between code points and locale collations.
_NAMES = st.lists(
    st.text(alphabet="0123456789_abcXYZéß-", min_size=1, max_size=12),
    unique=True,
    max_size=12,
).map(sorted)


# --- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_is_the_md5_of_sorted_name_checksum_pairs() -> None:
    assert fingerprint([]) == hashlib.md5(b"").hexdigest()
    pairs = [("0002_b", "c2"), ("0001_a", "c1")]
    assert fingerprint(pairs) == hashlib.md5(b"0001_a:c1,0002_b:c2").hexdigest()


def test_fingerprint_orders_names_by_code_point_not_locale() -> None:
    """Must agree with the SQL's ``ORDER BY name COLLATE "C"``: 'Z' < '_' < 'a' < 'é'."""
    pairs = [("a", "1"), ("é", "2"), ("Z", "3"), ("_", "4")]
    text = "Z:3,_:4,a:1,é:2"
    assert fingerprint(pairs) == hashlib.md5(text.encode()).hexdigest()


@given(names=_NAMES, data=st.data())
def test_fingerprint_ignores_the_order_rows_arrive_in(
    names: list[str], data: st.DataObject
) -> None:
    pairs = [(n, _checksum(n)) for n in names]
    shuffled = data.draw(st.permutations(pairs))
    assert fingerprint(shuffled) == fingerprint(pairs)


@given(names=_NAMES.filter(bool), data=st.data())
def test_fingerprint_changes_with_any_checksum(names: list[str], data: st.DataObject) -> None:
    pairs = [(n, _checksum(n)) for n in names]
    i = data.draw(st.integers(0, len(pairs) - 1))
    edited = list(pairs)
    edited[i] = (pairs[i][0], _checksum(pairs[i][0] + " edited"))
    assert fingerprint(edited) != fingerprint(pairs)


@given(names=_NAMES)
def test_prefix_fingerprints_name_each_prefix_length(names: list[str]) -> None:
    files = _files(*names)
    prefixes = prefix_fingerprints(files)
    assert sorted(prefixes.values()) == list(range(len(files) + 1))
    for k in range(len(files) + 1):
        assert prefixes[fingerprint((m.name, m.checksum) for m in files[:k])] == k


def test_a_summary_matching_no_prefix_is_planned_from_the_ledger() -> None:
    """A missing summary, or one of a ledger that skipped or edited a file, matches no
    prefix: the planner must not guess a position for it."""
    files = _files("0001_a", "0002_b", "0003_c")
    prefixes = prefix_fingerprints(files)
    skipped = fingerprint((m.name, m.checksum) for m in (files[0], files[2]))
    edited = fingerprint([(files[0].name, _checksum("something else"))])
    unknown = fingerprint([*((m.name, m.checksum) for m in files), ("0004_gone", "x")])
    for summary in (skipped, edited, unknown):
        assert summary not in prefixes
    assert fingerprint([]) in prefixes and prefixes[fingerprint([])] == 0


# --- ledger against files -------------------------------------------------------------------


@given(names=_NAMES, data=st.data())
def test_a_ledger_of_the_first_k_files_plans_exactly_the_rest(
    names: list[str], data: st.DataObject
) -> None:
    files = _files(*names)
    k = data.draw(st.integers(0, len(files)))
    plan = plan_from_ledger("acme", "tenant", files, _ledger(files[:k]))
    assert plan.pending == files[k:]
    assert plan.problems == []
    assert plan.applied == k and plan.total == len(files)
    assert plan.last_applied == (files[k - 1].name if k else None)
    assert plan.at_head == (k == len(files))
    # The fast path (a matching summary) and the slow path (the ledger) agree exactly.
    fast = plan_from_prefix("acme", "tenant", files, k)
    assert fast == plan
    assert fingerprint(plan.applied_pairs) in prefix_fingerprints(files)


@given(names=_NAMES, data=st.data())
def test_any_applied_subset_pends_the_rest_and_names_each_out_of_order_file(
    names: list[str], data: st.DataObject
) -> None:
    files = _files(*names)
    chosen = data.draw(st.lists(st.booleans(), min_size=len(files), max_size=len(files)))
    applied = [m for m, taken in zip(files, chosen, strict=True) if taken]
    applied_names = {m.name for m in applied}
    rows = list(reversed(_ledger(applied)))  # ledger rows in any order
    plan = plan_from_ledger("acme", "tenant", files, rows)
    assert plan.pending == [m for m in files if m.name not in applied_names]
    assert plan.applied == len(applied)
    newest = max(applied_names) if applied_names else None
    assert plan.last_applied == newest
    behind = [m.name for m in plan.pending if newest is not None and m.name < newest]
    assert len(plan.problems) == len(behind)
    for name, problem in zip(behind, plan.problems, strict=True):
        assert problem.startswith(f"acme: migration {name} sorts before {newest}")
        assert "--allow-out-of-order" in problem
    relaxed = plan_from_ledger("acme", "tenant", files, rows, allow_out_of_order=True)
    assert relaxed.problems == [] and relaxed.pending == plan.pending


def test_a_file_edited_after_it_was_applied_is_a_problem_not_a_step() -> None:
    files = _files("0001_a", "0002_b")
    old = _checksum("the original body")
    rows = [LedgerRow("0001_a", old)]
    plan = plan_from_ledger("acme", "tenant", files, rows)
    assert plan.problems == [
        f"acme: migration 0001_a was edited after it was applied "
        f"(0001_a.sql: checksum {files[0].checksum[:12]}, applied {old[:12]})"
    ]
    assert [m.name for m in plan.pending] == ["0002_b"]  # the edited one is not re-run
    assert not plan.at_head
    assert plan.applied_pairs == (("0001_a", old),)  # what the ledger says, not the file


def test_an_applied_migration_without_a_file_is_a_problem() -> None:
    files = _files("0001_a")
    rows = [*_ledger(files), LedgerRow("0002_gone", "c0ffee")]
    plan = plan_from_ledger("acme", "tenant", files, rows)
    assert plan.problems == ["acme: applied migration 0002_gone has no file"]
    assert plan.pending == [] and plan.applied == 2 and plan.last_applied == "0002_gone"
    assert not plan.at_head


def test_out_of_order_is_refused_unless_allowed() -> None:
    files = _files("0001_a", "0002_b", "0003_c", "0004_d")
    rows = _ledger([files[0], files[2]])
    plan = plan_from_ledger("acme", "tenant", files, rows)
    assert plan.problems == [
        "acme: migration 0002_b sorts before 0003_c, which is already applied "
        "(use --allow-out-of-order to apply it anyway)"
    ]
    assert [m.name for m in plan.pending] == ["0002_b", "0004_d"]
    allowed = plan_from_ledger("acme", "tenant", files, rows, allow_out_of_order=True)
    assert allowed.problems == []
    assert [m.name for m in allowed.pending] == ["0002_b", "0004_d"]


def test_every_problem_of_a_schema_is_named_at_once() -> None:
    files = _files("0001_a", "0002_b", "0003_c")
    rows = [LedgerRow("0001_a", "edited"), LedgerRow("0003_c", files[2].checksum)]
    rows.append(LedgerRow("0000_gone", "x"))
    problems = plan_from_ledger("s1", "tenant", files, rows).problems
    assert [p.split(":")[0] for p in problems] == ["s1", "s1", "s1"]
    assert "0000_gone has no file" in problems[0]
    assert "0001_a was edited" in problems[1]
    assert "0002_b sorts before 0003_c" in problems[2]


def test_an_empty_ledger_plans_every_file_and_no_files_means_at_head() -> None:
    files = _files("0001_a", "0002_b")
    plan = plan_from_ledger("public", "public", files, [])
    assert plan.pending == files and plan.problems == [] and plan.last_applied is None
    empty = plan_from_ledger("public", "public", [], [])
    assert empty.at_head and empty.total == 0
    assert SchemaPlan("x", "tenant", 0, 0, None).at_head


# --- down ranges ----------------------------------------------------------------------------

_APPLIED = ["0004_d", "0003_c", "0002_b", "0001_a"]  # newest first


def test_down_reverts_the_newest_one_by_default() -> None:
    assert revert_range(_APPLIED) == ["0004_d"]
    assert revert_range([]) == []


@pytest.mark.parametrize(
    ("steps", "expected"),
    [(0, []), (1, ["0004_d"]), (3, ["0004_d", "0003_c", "0002_b"]), (4, _APPLIED), (9, _APPLIED)],
)
def test_down_steps(steps: int, expected: list[str]) -> None:
    assert revert_range(_APPLIED, steps=steps) == expected


@pytest.mark.parametrize(
    ("to", "expected"),
    [("0004_d", []), ("0002_b", ["0004_d", "0003_c"]), ("0001_a", _APPLIED[:3])],
)
def test_down_to_keeps_the_target_applied(to: str, expected: list[str]) -> None:
    assert revert_range(_APPLIED, to=to) == expected
    assert revert_range(_APPLIED, steps=1, to=to) == expected  # to wins over steps


def test_down_to_a_migration_that_is_not_applied_is_refused() -> None:
    with pytest.raises(ValueError, match="migration 0009_x is not applied"):
        revert_range(_APPLIED, to="0009_x")


@given(names=_NAMES.filter(bool), data=st.data())
def test_down_to_then_the_rest_is_the_whole_ledger(names: list[str], data: st.DataObject) -> None:
    newest_first = list(reversed(names))
    to = data.draw(st.sampled_from(newest_first))
    reverted = revert_range(newest_first, to=to)
    kept = newest_first[len(reverted) :]
    assert reverted + kept == newest_first and kept[0] == to
    assert revert_range(newest_first, steps=len(reverted)) == reverted
