"""Commands that give a tenant its data: ``clone`` (another tenant's step, and rows) and
``seed`` (the configured seed, again)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import NoReturn

from sqlalchemy.engine import Connection

from .. import cloning, seeds, steps
from ..config import Config
from ..creation import Finish, FinishError, create_tenant
from ..errors import LockHeld, MtmError, TenantError, UsageError
from ..failures import StepError, step_error
from ..identifiers import validate_domains, validate_schema_name
from ..ledger import read_history
from ..locks import describe_holder, hold_schema, lock_holder, release_quietly, schema_lock_sql
from ..migrations import Migration, MigrationSet, discover
from ..plan import fingerprint
from ..registry import get_tenant
from ..results import CloneResult, SeedResult
from ..runner import Runner
from ..tables import existing
from .base import session
from .tenants import refuse_taken

log = logging.getLogger("mtm.tenant")

SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ"


def clone(
    config: Config,
    source: str,
    schema: str,
    *,
    domains: Sequence[str] = (),
    name: str | None = None,
    data: bool = False,
    migrations: MigrationSet | None = None,
) -> CloneResult:
    """Create tenant ``schema`` at ``source``'s exact step (the migrations its ledger
    holds, not head) and, with ``data``, with a copy of its rows: one transaction, under
    both schemas' locks, refused while a migrate runs. The seed does not run.

    Longer than most: the create, its failures and the log record of a clone read best
    in one place, in the order they happen."""
    schema = validate_schema_name(schema)
    if not isinstance(source, str) or not source:
        raise UsageError("name the tenant to clone")
    clean = validate_domains(domains)
    mset = migrations or discover(config.migrations_directory)
    runner = Runner(config)
    started = time.perf_counter()
    with session(config, purpose="mtm clone") as (_, conn):
        replay, expected = _checked(conn, config, source, schema, clean, mset, data)
        setup = [schema_lock_sql(source), steps.expect_ledger_sql(config, source, expected)]
        counts: dict[str, int] = {}
        finish = Finish(
            f"copying the rows of {source}", partial(_copy, config, source, schema, counts)
        )
        # With its rows, the clone reads in one snapshot, taken at its transaction's first
        # statement: the source's lock is held from before it (for the session), or a
        # migrate could commit on the source between that snapshot and the lock taken
        # in ``setup``, and the ledger check would pass under the old snapshot.
        if data:
            hold_schema(conn, source)
        try:
            result = create_tenant(
                runner,
                conn,
                schema,
                name,
                clean,
                replay,
                setup,
                finish=finish if data else None,
                begin=SNAPSHOT if data else "BEGIN",
            )
        except StepError as exc:
            _explain(conn, config, source, schema, clean, exc)
        finally:
            if data:
                release_quietly(conn, source)
        if not result.ok:
            raise MtmError(
                f"tenant {schema!r} was cloned, but migration {result.failed_migration} "
                f"failed after it: {result.error}; fix it and run 'mtm migrate --tenant "
                f"{schema} --to tenant:{max(m.name for m in replay)}'"
            )
        tenant = get_tenant(conn, config, schema)
    assert tenant is not None
    seconds = time.perf_counter() - started
    log.info(
        "cloned tenant %s into %s",
        source,
        schema,
        extra={
            "event": "tenant.clone",
            "schema": schema,
            "source": source,
            "applied": len(result.applied),
            "rows": sum(counts.values()) if data else None,
            "duration_ms": round(1000 * seconds, 3),
        },
    )
    return CloneResult(tenant, source, result.applied, seconds, counts if data else None)


def _checked(
    conn: Connection,
    config: Config,
    source: str,
    schema: str,
    domains: list[str],
    mset: MigrationSet,
    data: bool,
) -> tuple[list[Migration], str]:
    """Every refusal, before anything changes: the migrations to replay (loaded) and
    the fingerprint the source's ledger must still have under its lock."""
    if not existing(conn, config)["registry"] or get_tenant(conn, config, source) is None:
        raise TenantError(f"no tenant {source!r} is registered")
    refuse_taken(conn, config, schema, domains)
    if lock_holder(conn, config) is not None:
        raise LockHeld(
            f"tenant {source!r} was not cloned: another mtm run holds the migration lock "
            f"and may be changing it: {describe_holder(conn, config)}; clone it when "
            "that run has finished"
        )
    ledger = read_history(conn, config, source)
    replay = cloning.replay(source, ledger, mset)
    outside = [m.name for m in replay if not m.transactional]
    if data and outside:
        raise UsageError(
            f"tenant {source!r} cannot be cloned with its rows in one transaction: "
            f"migration {outside[0]} runs outside a transaction; clone it without --data"
        )
    for m in replay:
        if m.kind == "python":
            m.load()
    return replay, fingerprint((r.name, r.checksum or "") for r in ledger)


def _copy(
    config: Config, source: str, schema: str, counts: dict[str, int], conn: Connection
) -> None:
    counts.update(cloning.copy_rows(conn, config, source, schema))


def _explain(
    conn: Connection,
    config: Config,
    source: str,
    schema: str,
    domains: list[str],
    error: StepError,
) -> NoReturn:
    """Turn a failed clone into the clearest message; nothing of it was left."""
    if error.sqlstate == steps.LEDGER_MOVED:
        raise TenantError(
            f"tenant {schema!r} was not created: tenant {source!r} changed while it was "
            "being cloned (a migrate, down or stamp ran on it); run clone again"
        )
    refuse_taken(conn, config, schema, domains)
    where = (
        error.stage
        if isinstance(error, FinishError)
        else (f"migration {error.migration}" if error.migration else "creating it")
    )
    log.error(
        "cloning tenant %s into %s failed: %s",
        source,
        schema,
        error.message,
        extra={
            "event": "tenant.clone_failed",
            "schema": schema,
            "source": source,
            "error": error.message,
        },
    )
    raise MtmError(
        f"tenant {schema!r} was not created from {source!r}: {where} failed: "
        f"{error.message} (nothing was left behind)"
    )


def seed(config: Config, schema: str) -> SeedResult:
    """Run the configured seed again for tenant ``schema``: one transaction under its
    schema's lock; a failure keeps nothing of it."""
    hook = seeds.load(config)
    if hook is None:
        raise UsageError(
            "no seed is configured: set seed in the config (a .sql file or module:function)"
        )
    if not isinstance(schema, str) or not schema:
        raise UsageError("name the tenant to seed")
    runner = Runner(config)
    started = time.perf_counter()
    with session(config, purpose="mtm seed") as (_, conn):
        tenant = get_tenant(conn, config, schema) if existing(conn, config)["registry"] else None
        if tenant is None:
            raise TenantError(f"no tenant {schema!r} is registered")
        try:
            seeds.reseed(conn, config, hook, tenant, runner.settings.timeouts)
        except Exception as exc:
            message = step_error(exc, None).message
            log.error(
                "seeding tenant %s failed: %s",
                schema,
                message,
                extra={"event": "tenant.seed_failed", "schema": schema, "error": message},
            )
            raise MtmError(
                f"the seed {hook.spec} of tenant {schema!r} failed: {message} (nothing of "
                "it was kept)"
            ) from None
    seconds = time.perf_counter() - started
    log.info(
        "seeded tenant %s",
        schema,
        extra={"event": "tenant.seed", "schema": schema, "duration_ms": round(1000 * seconds, 3)},
    )
    return SeedResult(schema, hook.spec, seconds)
