"""Pure builders of step scripts: lists of single SQL statements, no database needed.

Every change mtm makes to one schema (a step up or down, a create, a drop) is one
transaction framed the same way by ``frame``: ``BEGIN``, the schema's advisory lock,
``SET LOCAL`` of search_path and timeouts, the check that the ledger is what was
planned, the change, the state row, ``COMMIT``. A script is a list of statements so
that an executor may send it in one round trip (``database.run_script`` joins them) or
one statement at a time. The body of a SQL migration stays one opaque item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from . import sqlscript
from .config import Config
from .identifiers import do_block, quote_ident, quote_literal
from .ledger import (
    FINGERPRINT_ITEM,
    delete_sql,
    insert_finished_sql,
    insert_sql,
    ledger_ddl,
    ledger_ref,
    state_delete_sql,
    state_upsert_sql,
)
from .locks import schema_lock_sql
from .migrations import Migration, Namespace
from .plan import StampChange
from .registry import domains_insert_sql, tenant_ref

# Raised by a step whose schema's ledger is not what the plan expected.
LEDGER_MOVED = "MTM01"
# Raised by a no-transaction step that would record a schema with an INVALID index.
INVALID_INDEX = "MTM02"
# Raised at the end of a transaction that something inside it ended (and so committed or
# threw away what came before): nothing after that point, the ledger row above all, holds.
TRANSACTION_ENDED = "MTM04"

Direction = Literal["up", "down"]
StateChange = Literal["upsert", "delete"] | None


@dataclass(frozen=True)
class Timeouts:
    """``lock_timeout`` and ``statement_timeout`` for a step (None: the server's)."""

    lock: str | None = None
    statement: str | None = None


@dataclass(frozen=True)
class Framed:
    """A transaction's statements before and after its body.

    A Python migration runs between ``head`` and ``tail`` on the same connection; SQL
    goes in ``around(body)``.
    """

    head: list[str]
    tail: list[str]

    def around(self, body: Sequence[str]) -> list[str]:
        return [*self.head, *body, *self.tail]


def frame(
    config: Config,
    schema: str,
    namespace: Namespace,
    *,
    timeouts: Timeouts = Timeouts(),
    expected: str | None = None,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
    state: StateChange = "upsert",
) -> Framed:
    """The one frame of every transaction that changes a schema.

    ``expected`` is the fingerprint the ledger must have under the lock (else SQLSTATE
    MTM01); ``before`` and ``after`` go on either side of the body (ledger rows, the
    registry rows of a create); ``state`` rewrites or deletes the schema's state row.
    """
    head = ["BEGIN", schema_lock_sql(schema), *local_settings(schema, timeouts), MARK_TRANSACTION]
    if expected is not None:
        head.append(expect_ledger_sql(config, schema, expected))
    head += before
    tail = [SAME_TRANSACTION, *after]
    if state == "upsert":
        tail.append(state_upsert_sql(config, schema, namespace))
    elif state == "delete":
        tail.append(state_delete_sql(config, schema))
    tail.append("COMMIT")
    return Framed(head, tail)


def local_settings(schema: str, timeouts: Timeouts) -> list[str]:
    """A step's settings for its transaction: the tenant's search_path and the timeouts
    (Citus passes these SET LOCALs on with the DDL it sends to a worker)."""
    out = [
        "SET LOCAL standard_conforming_strings = on",
        f"SET LOCAL search_path TO {quote_ident(schema)}",
    ]
    if timeouts.lock:
        out.append(f"SET LOCAL lock_timeout = {quote_literal(timeouts.lock)}")
    if timeouts.statement:
        out.append(f"SET LOCAL statement_timeout = {quote_literal(timeouts.statement)}")
    return out


# The frame's transaction marks itself in its head and checks the mark at the start of its
# tail. A COMMIT or ROLLBACK that a migration slipped past every other check ends the
# transaction, and the mark (transaction-local) with it; the check then fails the rest of
# the script, which the server runs as a transaction of its own and rolls back: the
# ledger row, written in the tail, is never recorded for a step that did not run whole.
MARK_TRANSACTION = "SELECT set_config('mtm.step_xid', txid_current()::text, true)"
SAME_TRANSACTION = (
    "DO $step$ BEGIN IF current_setting('mtm.step_xid', true) IS DISTINCT FROM "
    "txid_current()::text THEN RAISE EXCEPTION "
    "'a migration ended mtm''s transaction itself (COMMIT or ROLLBACK)' "
    f"USING ERRCODE = '{TRANSACTION_ENDED}', HINT = 'what it did before that may be "
    "committed; nothing after it was, and the step is not recorded: check the schema, "
    "and give migrations that manage transactions the no-transaction marker'; "
    "END IF; END $step$"
)


def expect_ledger_sql(config: Config, schema: str, expected: str) -> str:
    """Fail the step (SQLSTATE MTM01) unless the ledger is exactly what was planned.

    Runs under the schema's lock, so a concurrent down, create or migrate of the same
    schema can never make a step apply on top of a state it was not planned for.
    """
    ledger = ledger_ref(config, schema)
    message = quote_literal(f"the ledger of schema {schema} changed during the run")
    return do_block(
        f"BEGIN IF (SELECT md5(coalesce(string_agg({FINGERPRINT_ITEM}, ',' "
        f"ORDER BY name COLLATE \"C\"), '')) FROM {ledger}) IS DISTINCT FROM "
        f"{quote_literal(expected)} THEN RAISE EXCEPTION {message} "
        f"USING ERRCODE = '{LEDGER_MOVED}'; END IF; END"
    )


def no_invalid_indexes_sql(schema: str) -> str:
    """Fail (SQLSTATE MTM02) if the schema has an INVALID index.

    A CREATE INDEX CONCURRENTLY that failed or was interrupted leaves one behind, and
    IF NOT EXISTS then skips it: without this check a no-transaction migration run
    again would be recorded as applied while its index is unusable.
    """
    message = quote_literal(f"schema {schema} has an INVALID index: %")
    return do_block(
        "DECLARE bad text; BEGIN SELECT string_agg(c.relname, ', ') INTO bad "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = {quote_literal(schema)} AND NOT i.indisvalid; "
        f"IF bad IS NOT NULL THEN RAISE EXCEPTION {message}, bad "
        f"USING ERRCODE = '{INVALID_INDEX}', "
        "HINT = 'a CREATE INDEX CONCURRENTLY failed or was interrupted; "
        "drop the index and run mtm migrate again'; END IF; END"
    )


# --- steps -----------------------------------------------------------------------------


def step(
    config: Config,
    schema: str,
    namespace: Namespace,
    migration: Migration,
    which: Direction,
    *,
    timeouts: Timeouts = Timeouts(),
    expected: str | None = None,
) -> Framed:
    """The frame of a transactional step; its body is the migration (``body``).

    Up writes the ledger row after the body, behind the frame's check that the
    transaction is still the one it began (a concurrent run that applied the migration
    first is refused by the ledger check under the lock); down deletes the row.
    """
    if which == "up":
        before: list[str] = []
        after = record(config, schema, migration)
    else:
        before, after = [delete_sql(config, schema, migration.name)], []
    return frame(
        config,
        schema,
        namespace,
        timeouts=timeouts,
        expected=expected,
        before=before,
        after=after,
    )


def body(migration: Migration, which: Direction) -> list[str]:
    """A SQL migration's script as one opaque item (empty for a down with no SQL), and
    after it, going up, the statements of its reference-table directives."""
    sql = migration.up_sql if which == "up" else migration.down_sql or ""
    script = [sql] if sql.strip() else []
    if which == "up" and migration.namespace == "public" and "reference-table" in sql:
        from .reference import directive_sql

        script += directive_sql(migration)
    return script


def session_settings(schema: str, timeouts: Timeouts) -> list[str]:
    """Session-level settings for a migration that runs outside a transaction."""
    out = [f"SET search_path TO {quote_ident(schema)}"]
    if timeouts.lock:
        out.append(f"SET lock_timeout = {quote_literal(timeouts.lock)}")
    if timeouts.statement:
        out.append(f"SET statement_timeout = {quote_literal(timeouts.statement)}")
    return out


RESET_SETTINGS = ["RESET search_path", "RESET lock_timeout", "RESET statement_timeout"]


def outside_check(config: Config, schema: str, namespace: Namespace, expected: str) -> list[str]:
    """Before a no-transaction step: the ledger is still what was planned (MTM01)."""
    return frame(config, schema, namespace, expected=expected, state=None).around([])


def outside_record(
    config: Config, schema: str, namespace: Namespace, migration: Migration, which: Direction
) -> list[str]:
    """After a no-transaction step's statements: its ledger row and the state row, in a
    transaction of their own (up first refuses a schema with an INVALID index)."""
    if which == "up":
        change = [no_invalid_indexes_sql(schema), insert_sql(config, schema, migration)]
    else:
        change = [delete_sql(config, schema, migration.name)]
    return frame(config, schema, namespace, before=change).around([])


def split_statements(sql: str) -> list[str]:
    """Statements of a script, for migrations that run outside a transaction, split by
    PostgreSQL's own grammar."""
    return [statement.text for statement in sqlscript.split(sql)]


# --- tenants ---------------------------------------------------------------------------


def create(
    config: Config,
    schema: str,
    name: str | None,
    domains: Sequence[str],
    *,
    setup: Sequence[str] = (),
    timeouts: Timeouts = Timeouts(),
    begin: str = "BEGIN",
    sharding: Sequence[str] = (),
) -> Framed:
    """The frame of a create: registry row, domains (the first one primary), schema,
    ledger and ``setup`` (the tenant role) before the migrations (the body), the state
    row after them. ``begin`` opens it (``BEGIN ISOLATION LEVEL REPEATABLE READ``: a
    clone copies rows from one snapshot); ``sharding`` goes right before the schema
    (``citus.Mode.sharding_sql``: a distributed schema on a Citus cluster)."""
    lit = quote_literal
    before = [
        f"INSERT INTO {tenant_ref(config)} (schema_name, name) "
        f"VALUES ({lit(schema)}, {lit(name) if name is not None else 'NULL'})"
    ]
    if domains:
        before.append(domains_insert_sql(config, schema, list(domains)))
    before += [*sharding, f"CREATE SCHEMA {quote_ident(schema)}", ledger_ddl(config, schema)]
    before += setup
    framed = frame(config, schema, "tenant", timeouts=timeouts, before=before)
    return Framed([begin, *framed.head[1:]], framed.tail)


def create_body(config: Config, schema: str, migration: Migration) -> list[str]:
    """One SQL migration inside a create: its script, then its ledger row."""
    return [*body(migration, "up"), *record(config, schema, migration)]


def record(config: Config, schema: str, migration: Migration) -> list[str]:
    """A migration's ledger row with its duration, after its body (see ``step``)."""
    return [insert_finished_sql(config, schema, migration)]


def drop(config: Config, schema: str, role_sql: Sequence[str] = ()) -> list[str]:
    """Drop a tenant: its schema, registry row (domains cascade), state row and role."""
    return drop_framed(config, schema, role_sql).around([])


def drop_framed(config: Config, schema: str, role_sql: Sequence[str] = ()) -> Framed:
    """``drop`` in two parts: ``head`` opens the transaction and takes the schema's lock,
    ``tail`` drops; between them the drop may look at what it would take with it."""
    framed = frame(config, schema, "tenant", after=role_sql, state="delete")
    return Framed(
        framed.head,
        [
            f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE",
            f"DELETE FROM {tenant_ref(config)} WHERE schema_name = {quote_literal(schema)}",
            *framed.tail,
        ],
    )


def stamp(config: Config, change: StampChange) -> list[str]:
    """Record (with the files' checksums) or delete ledger rows without running any
    migration: one transaction under the schema's lock, refused (MTM01) if the ledger
    is no longer the one the change was planned from, with the state row rewritten."""
    schema = change.schema
    rows = [insert_sql(config, schema, m) for m in change.record]
    rows += [delete_sql(config, schema, name) for name in change.delete]
    before = [ledger_ddl(config, schema), *rows] if change.expected is None else rows
    framed = frame(config, schema, change.namespace, expected=change.expected, before=before)
    return framed.around([])


def refresh_states(config: Config, schemas: Sequence[str], namespace: Namespace) -> list[str]:
    """Rewrite the state rows of schemas at head whose summary said otherwise, each
    under its schema's lock so a concurrent down cannot interleave."""
    out = ["BEGIN"]
    for schema in schemas:
        out += [schema_lock_sql(schema), state_upsert_sql(config, schema, namespace)]
    return [*out, "COMMIT"]
