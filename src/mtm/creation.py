"""Creating a tenant: registry row, domains, schema, ledger and migrations, one transaction.

SQL migrations are sent together in one round trip. If that fails, the create is
tried again one migration per round trip, only to name the migration that failed.
Migrations from the first one that must run outside a transaction onwards are applied
as ordinary steps after the commit. A ``Finish`` (a seed, a clone's rows) runs in the
transaction after the migrations, just before the state row and the commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from . import steps
from .database import rollback_quietly, run_script
from .failures import StepError, step_error
from .migrations import Migration
from .plan import SchemaPlan
from .results import SchemaResult
from .runner import Runner

log = logging.getLogger("mtm.tenant")


@dataclass(frozen=True)
class Finish:
    """Work done in a create's transaction after its migrations: a seed, a clone's rows.

    ``label`` names it in a failure ("the seed", "copying the rows of acme").
    """

    label: str
    run: Callable[[Connection], None]


class FinishError(StepError):
    """The create failed in its ``Finish`` (``stage`` names it); nothing was left."""

    def __init__(self, error: StepError, stage: str) -> None:
        super().__init__(None, error.message, error.sqlstate)
        self.stage = stage


def create_tenant(
    runner: Runner,
    conn: Connection,
    schema: str,
    name: str | None,
    domains: list[str],
    migrations: list[Migration],
    setup: Sequence[str] = (),
    *,
    finish: Finish | None = None,
    begin: str = "BEGIN",
    sharding: Sequence[str] = (),
) -> SchemaResult:
    """Register a tenant, create its schema and ledger, and apply ``migrations``: all in
    one transaction, so a failure leaves no row and no schema behind. ``setup`` are
    statements run in that transaction right after the ledger (the tenant role);
    ``finish`` runs after the migrations (only with no migration that must run outside
    a transaction); ``begin`` opens the transaction (a clone reads in one snapshot);
    ``sharding`` makes the schema distributed on a Citus cluster (``citus.Mode``).

    Raises ``StepError`` if the create itself failed (and so left nothing behind); the
    result says how the migrations applied after the commit went.
    """
    inside: list[Migration] = []
    for m in migrations:
        if not m.transactional:
            break
        inside.append(m)
    result = SchemaResult(schema, "tenant")
    started = time.perf_counter()
    if finish is not None and len(inside) < len(migrations):
        raise ValueError("a finish needs every migration inside the create's transaction")
    args = (runner, conn, schema, name, domains, inside, setup)
    try:
        _create_once(*args, batch=True, finish=finish, begin=begin, sharding=sharding)
    except StepError as first:
        ended = first.sqlstate == steps.TRANSACTION_ENDED  # part of it is committed
        named = first.migration is not None or isinstance(first, FinishError)
        if ended or named or not any(m.kind == "sql" for m in inside):
            raise
        # Replayed one migration per round trip, to name the one at fault; if the
        # failure was passing (a lock timeout), the replay simply creates the tenant.
        _create_once(*args, batch=False, finish=finish, begin=begin, sharding=sharding)
    result.applied = [m.name for m in inside]
    rest = migrations[len(inside) :]
    if rest:
        done = tuple((m.name, m.checksum) for m in inside)
        plan = SchemaPlan(
            schema, "tenant", len(migrations), len(inside), None, list(rest), applied_pairs=done
        )
        tail = runner.apply_plan(conn, plan, schema)
        result.applied += tail.applied
        result.failed_migration, result.error = tail.failed_migration, tail.error
    result.seconds = time.perf_counter() - started
    return result


# (statements, the migration they belong to); a Python migration has no SQL of its own.
Chunk = tuple[list[str], Migration | None]


def _create_once(
    runner: Runner,
    conn: Connection,
    schema: str,
    name: str | None,
    domains: list[str],
    migrations: list[Migration],
    setup: Sequence[str],
    *,
    batch: bool,
    finish: Finish | None = None,
    begin: str = "BEGIN",
    sharding: Sequence[str] = (),
) -> None:
    """One attempt at the create transaction; ``batch`` sends every SQL migration in
    the same round trip as the frame, else one round trip each. A ``finish`` runs after
    them, before the tail, which then goes in a round trip of its own."""
    cfg = runner.config
    timeouts = runner.settings.timeouts
    framed = steps.create(
        cfg, schema, name, domains, setup=setup, timeouts=timeouts, begin=begin, sharding=sharding
    )
    units: list[Chunk] = [(framed.head, None)]
    for m in migrations:
        units.append(([] if m.kind == "python" else steps.create_body(cfg, schema, m), m))
    if finish is None:
        units.append((framed.tail, None))
    sent: list[Chunk] = []
    for statements, owner in units:
        python = owner is not None and owner.kind == "python"
        if batch and sent and not python and _is_sql(sent[-1]):
            sent[-1] = ([*sent[-1][0], *statements], None)  # one round trip, no single owner
        else:
            sent.append((statements, owner))
    current: Migration | None = None
    last_python: Migration | None = None  # only Python can still end the transaction
    stage: str | None = None
    try:
        for statements, owner in sent:
            current = owner
            if owner is not None and owner.kind == "python":
                last_python = owner
                runner.call_python(conn, owner, "up", schema, "tenant", schema)
                run_script(conn, steps.record(cfg, schema, owner))
            else:
                run_script(conn, statements)
        if finish is not None:
            current, stage = None, finish.label
            finish.run(conn)
            run_script(conn, framed.tail)
    except (Exception, SystemExit) as exc:
        rollback_quietly(conn)
        error = step_error(exc, current)
        ended = error.sqlstate == steps.TRANSACTION_ENDED
        if ended and error.migration is None and last_python is not None and stage is None:
            error.migration = last_python.name
        raise (FinishError(error, stage) if stage else error) from exc


def _is_sql(chunk: Chunk) -> bool:
    """Whether a chunk is SQL text (which may merge with more), not a Python migration."""
    return chunk[1] is None or chunk[1].kind == "sql"
