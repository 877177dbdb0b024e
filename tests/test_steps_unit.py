"""The step-script builders, without a database: order of statements, the frame with
and without its parts, quoting of hostile names, up versus down."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mtm import steps
from mtm.config import Config
from mtm.database import join_script
from mtm.locks import SCHEMA_LOCK_CLASS
from mtm.migrations import Migration
from mtm.steps import Timeouts

CONFIG = Config()
UP = "CREATE TABLE items (id int);\nINSERT INTO items VALUES (1); -- last line is a comment"
DOWN = "DROP TABLE items;"
QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def _migration(name: str = "0001_items", kind: str = "sql") -> Migration:
    return Migration(name, "tenant", Path(f"{name}.sql"), "c0ffee", kind, True, UP, DOWN)  # type: ignore[arg-type]


def _kinds(statements: list[str]) -> list[str]:
    """Each statement by its first words, to compare orders."""
    out = []
    for s in statements:
        if s.startswith("DO $mtm") and "pg_try_advisory_xact_lock" in s:
            out.append("lock")
        elif s == steps.MARK_TRANSACTION:
            out.append("mark")
        elif s == steps.SAME_TRANSACTION:
            out.append("intact")
        elif s.startswith("SET LOCAL"):
            out.append(s.split()[2])
        elif s.startswith("DO $mtm") and "IS DISTINCT FROM" in s:
            out.append("expect")
        elif s.startswith(('INSERT INTO "public"."mtm_migrations_state"',)):
            out.append("state")
        elif s.startswith("INSERT INTO") and "duration_ms" in s:
            out.append("ledger+duration")  # the row with its end time, one statement
        elif s.startswith("INSERT INTO"):
            out.append("ledger+")
        elif s.startswith('DELETE FROM "public"."mtm_migrations_state"'):
            out.append("state-")
        elif s.startswith("DELETE FROM"):
            out.append("delete")
        elif s in (UP, DOWN):
            out.append("body")
        else:
            out.append(s.split()[0])
    return out


def test_up_step_order_with_everything() -> None:
    framed = steps.step(
        CONFIG,
        "acme",
        "tenant",
        _migration(),
        "up",
        timeouts=Timeouts("5s", "1min"),
        expected="abc",
    )
    script = framed.around(steps.body(_migration(), "up"))
    assert _kinds(script) == [
        "BEGIN",
        "lock",
        "standard_conforming_strings",
        "search_path",
        "lock_timeout",
        "statement_timeout",
        "mark",
        "expect",
        "body",
        "intact",
        "ledger+duration",
        "state",
        "COMMIT",
    ]
    assert script[4] == "SET LOCAL lock_timeout = '5s'"
    assert script[5] == "SET LOCAL statement_timeout = '1min'"
    assert "'abc'" in script[7] and "MTM01" in script[7]
    assert all(";" not in s for s in script if s not in (UP,) and not s.startswith("DO "))


def test_down_step_deletes_the_ledger_row_and_records_no_duration() -> None:
    m = _migration()
    script = steps.step(CONFIG, "acme", "tenant", m, "down").around(steps.body(m, "down"))
    assert _kinds(script) == [
        "BEGIN",
        "lock",
        "standard_conforming_strings",
        "search_path",
        "mark",
        "delete",
        "body",
        "intact",
        "state",
        "COMMIT",
    ]
    assert script[6] == DOWN
    assert script[5] == 'DELETE FROM "acme"."mtm_migrations" WHERE name = \'0001_items\''


def test_frame_without_expected_ledger_or_timeouts_has_neither() -> None:
    script = steps.step(CONFIG, "acme", "tenant", _migration(), "up").around([])
    kinds = _kinds(script)
    assert "expect" not in kinds
    assert "lock_timeout" not in kinds and "statement_timeout" not in kinds
    only_lock = steps.step(
        CONFIG, "acme", "tenant", _migration(), "up", timeouts=Timeouts(lock="2s")
    ).around([])
    assert "lock_timeout" in _kinds(only_lock) and "statement_timeout" not in _kinds(only_lock)


def test_python_steps_split_the_frame_around_the_migration() -> None:
    framed = steps.step(CONFIG, "acme", "tenant", _migration(kind="python"), "up")
    assert framed.head[0] == "BEGIN" and _kinds(framed.head)[-1] == "mark"
    assert _kinds(framed.tail) == ["intact", "ledger+duration", "state", "COMMIT"]


def test_public_steps_record_the_public_namespace() -> None:
    script = steps.step(CONFIG, "public", "public", _migration(), "up").around([])
    assert "'public', 'public', count(*)" in script[-2]


@pytest.mark.parametrize(
    "schema",
    ['we"ird', "o'brien", "x; DROP TABLE tenants; --", "$mtm$", "Ünï code"],
)
def test_hostile_schema_names_are_quoted_everywhere(schema: str) -> None:
    m = _migration()
    scripts = [
        steps.step(CONFIG, schema, "tenant", m, "up", timeouts=Timeouts("5s"), expected="x").around(
            []
        ),
        steps.create(CONFIG, schema, "Name 'quoted'", ["a.example.com"]).around([]),
        steps.drop(CONFIG, schema),
        steps.outside_record(CONFIG, schema, "tenant", m, "up"),
        steps.session_settings(schema, Timeouts()),
    ]
    ident = '"' + schema.replace('"', '""') + '"'
    literal = "'" + schema.replace("'", "''") + "'"
    for script in scripts:
        text = join_script(script)
        assert ident in text or literal in text
        # With every quoted identifier and literal taken out, the name is nowhere.
        assert schema not in QUOTED.sub("", text), text
        for statement in script:
            if statement.startswith("DO "):
                tag = statement.split()[1]
                assert statement.count(tag) == 2, statement  # nothing ends the block early
    lock = steps.step(CONFIG, schema, "tenant", m, "up").head[1]
    assert f"pg_try_advisory_xact_lock({SCHEMA_LOCK_CLASS}, hashtext({literal}))" in lock
    assert "MTM03" in lock
    assert steps.step(CONFIG, schema, "tenant", m, "up").head[3] == (
        f"SET LOCAL search_path TO {ident}"
    )


def test_create_frames_registry_schema_and_ledger_before_the_migrations() -> None:
    framed = steps.create(
        CONFIG, "acme", None, ["a.example.com", "b.example.com"], setup=["CREATE ROLE r"]
    )
    assert _kinds(framed.head[:5]) == [
        "BEGIN",
        "lock",
        "standard_conforming_strings",
        "search_path",
        "mark",
    ]
    assert framed.head[3] == 'SET LOCAL search_path TO "acme"'
    assert framed.head[5] == (
        'INSERT INTO "public"."tenants" (schema_name, name) VALUES (\'acme\', NULL)'
    )
    assert framed.head[6] == (
        'INSERT INTO "public"."tenants_domains" (domain, schema_name, is_primary) VALUES '
        "('a.example.com', 'acme', true), ('b.example.com', 'acme', false)"
    )
    assert framed.head[7] == 'CREATE SCHEMA "acme"'
    assert framed.head[8].startswith('CREATE TABLE IF NOT EXISTS "acme"."mtm_migrations"')
    assert framed.head[9] == "CREATE ROLE r"
    assert _kinds(framed.tail) == ["intact", "state", "COMMIT"]
    # The ledger row with its duration in one statement, as in every step.
    created = steps.create_body(CONFIG, "acme", _migration())
    assert _kinds(created) == ["body", "ledger+duration"]
    assert "clock_timestamp()" in created[1]


def test_a_create_may_open_its_transaction_otherwise() -> None:
    """A clone with rows reads every table from one snapshot: the create's BEGIN says so,
    and the rest of the frame stays the same."""
    plain = steps.create(CONFIG, "acme", None, [])
    snapshot = steps.create(CONFIG, "acme", None, [], begin="BEGIN ISOLATION LEVEL REPEATABLE READ")
    assert snapshot.head[0] == "BEGIN ISOLATION LEVEL REPEATABLE READ"
    assert snapshot.head[1:] == plain.head[1:] and snapshot.tail == plain.tail


def test_drop_removes_schema_registry_row_state_and_role_in_one_transaction() -> None:
    script = steps.drop(CONFIG, "acme", ['DROP ROLE "r"'])
    assert script[0] == "BEGIN" and script[-1] == "COMMIT"
    assert 'DROP SCHEMA IF EXISTS "acme" CASCADE' in script
    assert 'DELETE FROM "public"."tenants" WHERE schema_name = \'acme\'' in script
    assert _kinds(script)[-3:] == ["DROP", "state-", "COMMIT"]
    assert "lock_timeout" not in _kinds(script)  # a drop waits for running steps


def test_drop_framed_locks_before_the_drop_and_is_the_same_script() -> None:
    framed = steps.drop_framed(CONFIG, "acme", ['DROP ROLE "r"'])
    assert framed.around([]) == steps.drop(CONFIG, "acme", ['DROP ROLE "r"'])
    # What runs between head and tail (the look at outside dependents) is under the lock,
    # in the transaction, and before anything is dropped.
    assert _kinds(framed.head)[:2] == ["BEGIN", "lock"]
    assert not any("DROP" in s or "DELETE" in s for s in framed.head)
    assert framed.tail[0] == 'DROP SCHEMA IF EXISTS "acme" CASCADE'
    assert framed.tail[-1] == "COMMIT"


def test_outside_transaction_scripts() -> None:
    m = _migration()
    check = steps.outside_check(CONFIG, "acme", "tenant", "fp")
    assert _kinds(check) == [
        "BEGIN",
        "lock",
        "standard_conforming_strings",
        "search_path",
        "mark",
        "expect",
        "intact",
        "COMMIT",
    ]
    record = steps.outside_record(CONFIG, "acme", "tenant", m, "up")
    kinds = _kinds(record)
    assert "MTM02" in record[5] and kinds[6:] == ["ledger+", "intact", "state", "COMMIT"]
    undo = steps.outside_record(CONFIG, "acme", "tenant", m, "down")
    assert "MTM02" not in join_script(undo)
    assert _kinds(undo)[5:] == ["delete", "intact", "state", "COMMIT"]
    assert steps.session_settings("acme", Timeouts("1s", "2s")) == [
        'SET search_path TO "acme"',
        "SET lock_timeout = '1s'",
        "SET statement_timeout = '2s'",
    ]


def test_joined_script_keeps_a_trailing_comment_from_eating_the_next_statement() -> None:
    text = join_script(["BEGIN", UP, "COMMIT"])
    assert text.endswith("-- last line is a comment\n;\nCOMMIT\n;\n")


def test_refresh_states_locks_each_schema_before_its_row() -> None:
    script = steps.refresh_states(CONFIG, ["a", "b"], "tenant")
    assert _kinds(script) == ["BEGIN", "lock", "state", "lock", "state", "COMMIT"]
