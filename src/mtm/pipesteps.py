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
from .steps import Timeouts


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
) -> list[str]:
    """A transactional SQL step up as the statements of one pipeline segment, for a
    schema whose ledger must be ``applied`` (name, checksum) when it starts."""
    lit = quote_literal
    expected = fingerprint(applied)
    after = [*applied, (migration.name, migration.checksum)]
    ledger = ledger_ref(config, schema)
    lock = f"pg_try_advisory_xact_lock({SCHEMA_LOCK_CLASS}, hashtext({lit(schema)}))"
    found = (
        f"(SELECT md5(coalesce(string_agg({FINGERPRINT_ITEM}, ',' ORDER BY name "
        f"COLLATE \"C\"), '')) FROM {ledger})"
    )
    settings = [
        ("standard_conforming_strings", "on"),
        ("search_path", quote_ident(schema)),
    ]
    if timeouts.lock:
        settings.append(("lock_timeout", timeouts.lock))
    if timeouts.statement:
        settings.append(("statement_timeout", timeouts.statement))
    head = (
        f"SELECT CASE WHEN NOT {lock} THEN {fail(f'schema {schema} is busy')} "
        f"WHEN {found} IS DISTINCT FROM {lit(expected)} "
        f"THEN {fail(f'the ledger of schema {schema} changed during the run')} END, "
        + ", ".join(f"set_config({lit(name)}, {lit(value)}, true)" for name, value in settings)
        + ", set_config('mtm.step_xid', txid_current()::text, true)"
    )
    same = "current_setting('mtm.step_xid', true) IS NOT DISTINCT FROM txid_current()::text"
    record = (
        f"WITH recorded AS (INSERT INTO {ledger} (name, checksum, applied_at, duration_ms) "
        f"VALUES ({lit(migration.name)}, CASE WHEN {same} THEN {lit(migration.checksum)} "
        f"ELSE {fail('a migration ended the transaction')}::text END, clock_timestamp(), "
        "1000 * extract(epoch FROM clock_timestamp() - now()))) "
        f"INSERT INTO {state_ref(config)} AS s "
        "(schema_name, namespace, applied, last_migration, fingerprint, updated_at) "
        f"VALUES ({lit(schema)}, {lit(namespace)}, {len(after)}, "
        f"{lit(max(name for name, _ in after))}, {lit(fingerprint(after))}, now()) "
        "ON CONFLICT (schema_name) DO UPDATE SET namespace = excluded.namespace, "
        "applied = excluded.applied, last_migration = excluded.last_migration, "
        "fingerprint = excluded.fingerprint, updated_at = excluded.updated_at"
    )
    return ["BEGIN", head, *body, record, "COMMIT"]
