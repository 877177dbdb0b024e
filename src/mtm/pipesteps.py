"""Pure builders of pipelined steps: the frame of ``steps.frame`` in fewer, cheaper
statements, for steps sent in a pipeline (``pipeline.StepPipeline``).

In a pipeline every statement is a message of its own, which the server parses, plans
and answers on its own, and each ``DO`` block is compiled anew. So the frame's checks
are plain expressions here, folded into the statements that must be there anyway:

    BEGIN
    SELECT <the schema's lock, else fail>, <the ledger as planned, else fail>,
           set_config(search_path, timeouts, the transaction's mark; all LOCAL)
    <the migration, one statement per message>
    WITH row AS (INSERT INTO <ledger> ...)   -- checksum only if the mark is still ours
    INSERT INTO <state> VALUES (...) ON CONFLICT DO UPDATE
    COMMIT

A check that fails raises an error whose words say which (``invalid input syntax for
type integer: "mtm: ..."``); the step's transaction is then rolled back and the
pipeline hands the step to the ordinary path, which runs the full frame with its own
SQLSTATEs (MTM01, MTM03, MTM04), waits, retries and messages. The checks are exactly
the ordinary frame's: the lock is tried, never waited for; the ledger's fingerprint is
read under it; the ledger row is written only inside the transaction that began.

On a Citus database the head and the rows are split where Citus would run them on the
wrong node or refuse them (``step_up``'s ``apart``): the same checks, two statements more.

The state row is written from what the ledger is known to hold rather than read back
from it: under the lock, the ledger was checked to be the planned rows, and this
transaction adds one, so its count, newest name and fingerprint are those of the
planned rows and this one (``plan.fingerprint``, the same MD5 as the SQL's).
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import Config
from .identifiers import quote_ident, quote_literal
from .ledger import FINGERPRINT_ITEM, ledger_ref, state_ref
from .locks import SCHEMA_LOCK_CLASS
from .migrations import Migration, Namespace
from .plan import fingerprint
from .steps import Timeouts, local_settings


def fail(message: str) -> str:
    """An int expression that always raises, naming ``message``, when evaluated (and
    only then: ``pg_backend_pid()`` keeps the planner from evaluating it beforehand)."""
    return f"({quote_literal(f'mtm: {message}')} || left(pg_backend_pid()::text, 0))::int"


def step_up(
    config: Config,
    schema: str,
    namespace: Namespace,
    migration: Migration,
    body: Sequence[str],
    *,
    timeouts: Timeouts,
    applied: Sequence[tuple[str, str]],
    apart: bool = False,
) -> list[str]:
    """A transactional SQL step up as the statements of one pipeline segment, for a
    schema whose ledger must be ``applied`` (name, checksum) when it starts. ``apart``:
    the frame of a Citus database (``_head``, ``_record``)."""
    head = _head(config, schema, timeouts, fingerprint(applied), apart)
    record = _record(
        config,
        schema,
        namespace,
        migration,
        [*applied, (migration.name, migration.checksum)],
        apart,
    )
    return ["BEGIN", *head, *body, *record, "COMMIT"]


def _head(config: Config, schema: str, timeouts: Timeouts, expected: str, apart: bool) -> list[str]:
    """After BEGIN: the schema's lock tried, the ledger compared with ``expected``, the
    settings and the transaction's mark."""
    lit = quote_literal
    lock = f"pg_try_advisory_xact_lock({SCHEMA_LOCK_CLASS}, hashtext({lit(schema)}))"
    found = (
        f"(SELECT md5(coalesce(string_agg({FINGERPRINT_ITEM}, ',' ORDER BY name "
        f"COLLATE \"C\"), '')) FROM {ledger_ref(config, schema)})"
    )
    busy = fail(f"schema {schema} is busy")
    moved = fail(f"the ledger of schema {schema} changed during the run")
    mark = "set_config('mtm.step_xid', txid_current()::text, true)"
    if not apart:
        settings = [("standard_conforming_strings", "on"), ("search_path", quote_ident(schema))]
        if timeouts.lock:
            settings.append(("lock_timeout", timeouts.lock))
        if timeouts.statement:
            settings.append(("statement_timeout", timeouts.statement))
        configs = "".join(f"set_config({lit(n)}, {lit(v)}, true), " for n, v in settings)
        return [
            f"SELECT CASE WHEN NOT {lock} THEN {busy} "
            f"WHEN {found} IS DISTINCT FROM {lit(expected)} THEN {moved} END, {configs}{mark}"
        ]
    # Citus runs a query that reads a distributed table (the ledger) on its worker,
    # functions and all: the lock, the mark and the settings would be taken there,
    # not on the coordinator. The lock and the mark get a query that reads no table;
    # the settings are the ordinary frame's SET LOCALs (search_path as an identifier:
    # Citus forwards it with the DDL it sends to the worker, where a quoted string's
    # value did not resolve).
    return [
        *local_settings(schema, timeouts),
        f"SELECT CASE WHEN NOT {lock} THEN {busy} END, {mark}",
        f"SELECT CASE WHEN {found} IS DISTINCT FROM {lit(expected)} THEN {moved} END",
    ]


def _record(
    config: Config,
    schema: str,
    namespace: Namespace,
    migration: Migration,
    after: list[tuple[str, str]],
    apart: bool,
) -> list[str]:
    """The ledger row (its checksum only while the transaction is the one that began)
    and the state row of the ledger ``after`` this step."""
    lit = quote_literal
    same = "current_setting('mtm.step_xid', true) IS NOT DISTINCT FROM txid_current()::text"
    ended = fail("a migration ended the transaction")

    def intact(value: str) -> str:  # the value while the transaction is ours, else fail
        return f"CASE WHEN {same} THEN {value} ELSE {ended}::text END"

    def row(checksum: str) -> str:
        return (
            f"INSERT INTO {ledger_ref(config, schema)} (name, checksum, applied_at, "
            f"duration_ms) VALUES ({lit(migration.name)}, {checksum}, clock_timestamp(), "
            "1000 * extract(epoch FROM clock_timestamp() - now()))"
        )

    def state(schema_name: str) -> str:
        return (
            f"INSERT INTO {state_ref(config)} AS s "
            "(schema_name, namespace, applied, last_migration, fingerprint, updated_at) "
            f"VALUES ({schema_name}, {lit(namespace)}, {len(after)}, "
            f"{lit(max(name for name, _ in after))}, {lit(fingerprint(after))}, now()) "
            "ON CONFLICT (schema_name) DO UPDATE SET namespace = excluded.namespace, "
            "applied = excluded.applied, last_migration = excluded.last_migration, "
            "fingerprint = excluded.fingerprint, updated_at = excluded.updated_at"
        )

    if not apart:  # one statement, the check on the ledger row
        return [f"WITH recorded AS ({row(intact(lit(migration.checksum)))}) {state(lit(schema))}"]
    # Citus refuses a CTE writing a distributed table (the ledger) beside a local one
    # (the state row): two statements. The check goes on the state row, a table of the
    # coordinator, which evaluates it itself; its failure rolls the ledger row back with
    # it (one transaction, or, if the migration ended mtm's, the implicit one the
    # pipeline runs until its Sync).
    return [row(lit(migration.checksum)), state(intact(lit(schema)))]
