"""``create --existing``: register schemas another tool made, without running anything.

Everything is checked before the first change (names, that each schema exists, is not
registered and has no ledger, the domains, the baseline); then each schema is
registered in one transaction of its own under its lock (``mtm.existing``), so a fleet
of thousands is registered schema by schema, and one that fails is listed without
undoing the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from sqlalchemy.engine import Connection

from ..config import Config
from ..database import rollback_quietly, run_script
from ..errors import MtmError, TenantError, UsageError
from ..existing import (
    ExistingSchema,
    RegisterResult,
    matching,
    read_schema_file,
    refuse_duplicates,
    register_sql,
    up_to,
)
from ..identifiers import validate_domains, validate_schema_name
from ..ledger import existing_ledgers
from ..migrations import Migration, discover
from ..progress import NoProgress, Progress
from ..registry import registered_among, tenant_of_domain
from ..results import SchemaResult
from ..schemas import existing_schemas
from ..tables import ensure_bootstrap
from ..tables import existing as _existing
from ..words import plural
from .base import session

log = logging.getLogger("mtm.tenant")

# Called once everything is checked, before the first change (the CLI prints it).
Show = Callable[[Sequence[ExistingSchema], Sequence[Migration], Sequence[str]], None]


def create_existing(
    config: Config,
    schema: str,
    *,
    baseline: str | None = None,
    domains: Sequence[str] = (),
    name: str | None = None,
) -> RegisterResult:
    """Register ``schema``, made by another tool, as a tenant: its registry row and
    domains, a ledger recording every tenant migration up to and including
    ``baseline`` as applied (none by default), in one transaction. Nothing runs.

    Refused (``TenantError``) if the schema does not exist, is registered or has a
    ledger already.
    """
    clean = validate_domains(domains)
    item = ExistingSchema(validate_schema_name(schema), tuple(clean), name)
    result = _register(config, [item], baseline, from_list=False, yes=True)
    if result.failed:
        raise MtmError(
            f"schema {schema!r} was not registered: {result.failed[schema]} (nothing was changed)"
        )
    return result


def create_existing_many(
    config: Config,
    *,
    schemas: Sequence[str | ExistingSchema] | None = None,
    from_file: str | Path | None = None,
    match: str | None = None,
    baseline: str | None = None,
    yes: bool = False,
    show: Show | None = None,
    progress: Progress | None = None,
) -> RegisterResult:
    """Register many existing schemas: named (``schemas``), one per line of a file
    (``from_file``: a schema, then optionally its domains) or every schema not yet
    registered that a shell glob ``match``es. Schemas of a list that are registered
    already are skipped, so the same command can be run again after a failure. More
    than one schema needs ``yes``. One transaction per schema; the result lists the
    failures (the others stay registered).
    """
    if sum(x is not None for x in (schemas, from_file, match)) != 1:
        raise UsageError("choose exactly one of SCHEMA, --from-file FILE or --match PATTERN")
    items: list[ExistingSchema] | None = None
    if from_file is not None:
        items = read_schema_file(from_file)
    elif schemas is not None:
        items = [
            s if isinstance(s, ExistingSchema) else ExistingSchema(validate_schema_name(s))
            for s in schemas
        ]
    return _register(
        config,
        items,
        baseline,
        from_list=True,
        yes=yes,
        match=match,
        show=show,
        progress=progress,
    )


def _register(
    config: Config,
    items: list[ExistingSchema] | None,
    baseline: str | None,
    *,
    from_list: bool,
    yes: bool,
    match: str | None = None,
    show: Show | None = None,
    progress: Progress | None = None,
) -> RegisterResult:
    """Check everything, say what will change, then one transaction per schema."""
    record = up_to(discover(config.migrations_directory).tenant, baseline)
    with session(config, purpose="mtm create --existing") as (_, conn):
        known = _existing(conn, config)["registry"]  # mtm's tables are made only to register
        present = existing_schemas(conn)
        if items is None:
            assert match is not None
            registered = registered_among(conn, config, sorted(present)) if known else set()
            items = [ExistingSchema(s) for s in matching(match, present, registered)]
            if not items:
                raise TenantError(
                    f"--match {match!r} matches no schema that is not registered already"
                )
        items, skipped = _check(conn, config, items, present, known, from_list)
        if show is not None:
            show(items, record, skipped)
        if len(items) > 1 and not yes:
            raise UsageError(
                f"refusing to register {plural(len(items), 'schema')} without --yes "
                "(nothing was changed)"
            )
        result = RegisterResult(record[-1].name if record else None, [m.name for m in record])
        result.skipped = skipped
        ensure_bootstrap(conn, config)
        _apply(conn, config, items, record, result, progress or NoProgress())
    return result


def _check(
    conn: Connection,
    config: Config,
    items: list[ExistingSchema],
    present: set[str],
    known: bool,
    skip_registered: bool,
) -> tuple[list[ExistingSchema], list[str]]:
    """The schemas to register and those skipped as registered already (``known``:
    the registry exists); refuses (``TenantError``, nothing changed) a missing schema,
    a ledger or a domain taken."""
    refuse_duplicates(items)
    registered = registered_among(conn, config, [i.schema for i in items]) if known else set()
    if registered and not skip_registered:
        raise TenantError(f"tenant {items[0].schema!r} is registered already")
    skipped = [i.schema for i in items if i.schema in registered]
    todo = [i for i in items if i.schema not in registered]
    missing = [i.schema for i in todo if i.schema not in present]
    if missing:
        more = f" and {plural(len(missing) - 3, 'other')}" if len(missing) > 3 else ""
        raise TenantError(
            f"schema {', '.join(repr(s) for s in missing[:3])}{more} does not exist: "
            "--existing registers schemas that are already there (nothing was changed)"
        )
    ledgers = sorted(existing_ledgers(conn, config, [i.schema for i in todo]))
    if ledgers:
        raise TenantError(
            f"schema {ledgers[0]!r} already has mtm's ledger table "
            f"{config.migrations_table} but no registry row; look at it with "
            "'mtm validate' (nothing was changed)"
        )
    for item in todo if known else []:
        for d in item.domains:
            owner = tenant_of_domain(conn, config, d)
            if owner is not None:
                raise TenantError(
                    f"domain {d!r} already belongs to tenant {owner!r} (nothing was changed)"
                )
    return todo, skipped


def _apply(
    conn: Connection,
    config: Config,
    items: Sequence[ExistingSchema],
    record: Sequence[Migration],
    result: RegisterResult,
    progress: Progress,
) -> None:
    """One transaction per schema; a failure is recorded and the next schema goes on."""
    started = time.perf_counter()
    progress.begin(len(items), len(items) * len(record))
    try:
        for item in items:
            one = time.perf_counter()
            done = SchemaResult(item.schema, "tenant")
            try:
                run_script(conn, register_sql(config, item, record))
            except psycopg.Error as exc:
                rollback_quietly(conn)
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                result.failed[item.schema] = reason
                done.failed_migration, done.error = "registration", reason
                log.error(
                    "registering schema %s failed: %s",
                    item.schema,
                    reason,
                    extra={
                        "event": "tenant.register_failed",
                        "schema": item.schema,
                        "error": reason,
                    },
                )
            else:
                result.registered.append(item.schema)
                done.applied = [m.name for m in record]
                log.info(
                    "registered existing schema %s",
                    item.schema,
                    extra={
                        "event": "tenant.register",
                        "schema": item.schema,
                        "recorded": len(record),
                    },
                )
            done.seconds = time.perf_counter() - one
            progress.schema_done(0, done)
    finally:
        progress.end()
        result.seconds = time.perf_counter() - started
