"""``adopt``: take over a database made by the original multi-tenant-migrate tool.

Read what it left, refuse anything that would leave the adoption half-done, write a
baseline migration per namespace with a history (the structure its legacy files built,
as schema-neutral SQL), then move: one transaction for the registry and the public
schema, one per tenant schema. Run again after an interruption, it finishes the work
(``adoption.py`` describes the marker that makes that possible).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import adoption, baseline, catalog, roles
from ..adoptplan import (
    Checked,
    baseline_path,
    baseline_text,
    check,
    data_migrations,
)
from ..config import Config
from ..database import resolve_url, rollback_quietly, run_script
from ..errors import MigrationFileError, MtmError, ValidationFailed
from ..failures import step_error
from ..ledger import PUBLIC
from ..locks import acquire_run_lock, release_run_lock
from ..migrations import Migration, MigrationSet, Namespace, discover
from ..results import AdoptResult
from ..tables import inspect
from .base import session

log = logging.getLogger("mtm.adopt")

# Called with what will change before anything does (the CLI prints it).
Show = Callable[[AdoptResult], None]


def adopt(
    config: Config,
    *,
    dry_run: bool = False,
    reference: str | None = None,
    include_rows: Sequence[str] = (),
    show: Show | None = None,
) -> AdoptResult:
    """Move the original tool's mapper into mtm's registry and each of its ledgers into
    mtm's ledger (every legacy file recorded under its mtm name, adopted, no checksum),
    with a baseline per namespace that adopted schemas record and new tenants run.

    ``reference`` names the tenant whose step and structure all tenants take when they
    stand at different steps; ``include_rows`` puts those tables' rows into the tenant
    baseline. With ``dry_run``, says what would change and changes nothing.
    """
    mset = discover(config.migrations_directory)
    with session(config, purpose="mtm adopt", upgrades=True) as (_, conn):
        if not dry_run:  # before reading: what is read must not change until the end
            acquire_run_lock(conn, config, wait=0, command="adopt")
        try:
            legacy = adoption.read(conn, config)
            if legacy is None:
                return _nothing(conn, config, dry_run)
            mapper = adoption.mapper_ref(config, retire=legacy.unfinished is not None)
            checked, problems = check(legacy, mset, reference, mapper)
            if problems:
                more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
                raise ValidationFailed(
                    "refusing to adopt: "
                    + "; ".join(problems[:3])
                    + more
                    + " (nothing was changed)"
                )
            result = _result(config, legacy, checked, dry_run)
            texts = _baselines(conn, config, mset, checked, include_rows, result)
            if show is not None:
                show(result)
            if dry_run:
                return result
            mset = _write(config, texts)
            _move(conn, config, mset, legacy, checked, result)
        finally:
            if not dry_run:
                release_run_lock(conn, config)
    return result


def _nothing(conn: Connection, config: Config, dry_run: bool) -> AdoptResult:
    """No legacy mapper and no unfinished adoption: mtm's already, or not the tool's."""
    mapper = adoption.mapper_ref(config)
    if not inspect(conn, config).exists["registry"]:
        raise ValidationFailed(
            f"there is no mapper table {mapper} of the original multi-tenant-migrate tool "
            "in this database: nothing to adopt (tenantMapperTableName in the config names it)"
        )
    return AdoptResult(
        dry_run, mapper, config.migrations_table, False, [], [], [], [], [], nothing=True
    )


def _result(
    config: Config, legacy: adoption.LegacyDatabase, checked: Checked, dry_run: bool
) -> AdoptResult:
    resumed = legacy.unfinished is not None
    schemas = (
        legacy.unfinished if legacy.unfinished is not None else [m.schema for m in checked.moves]
    )
    return AdoptResult(
        dry_run=dry_run,
        mapper=adoption.mapper_ref(config),
        ledger=config.migrations_table,
        resumed=resumed,
        moved=[] if resumed else [(m.schema, m.domains) for m in checked.moves],
        public_record=[] if resumed else [m.name for m in checked.history["public"]],
        schemas=list(schemas),
        tenant_record=[m.name for m in checked.history["tenant"]],
        baselines=[],
        reference=None if resumed else checked.reference,
        off_step=checked.off_step,
    )


def _baselines(
    conn: Connection,
    config: Config,
    mset: MigrationSet,
    checked: Checked,
    include_rows: Sequence[str],
    result: AdoptResult,
) -> dict[Path, str]:
    """The baseline files to write (none for a namespace without history, or whose
    baseline a first, interrupted run wrote), with what the result says about them."""
    now = datetime.now(UTC)
    texts: dict[Path, str] = {}
    url = resolve_url(config)
    for ns in ("public", "tenant"):
        namespace: Namespace = "public" if ns == "public" else "tenant"
        history = checked.history[namespace]
        found = mset.baseline(namespace)
        if not history:
            continue
        if found is None and result.resumed:
            raise ValidationFailed(
                f"the {namespace} baseline the interrupted adoption wrote is not in "
                f"{mset.directory}: restore it (nothing was changed)"
            )
        if found is not None:
            if include_rows and namespace == "tenant":
                result.warnings.append(
                    f"--include-rows ignored: the tenant baseline {found.path.name} exists already"
                )
            result.baselines.append(str(found.path))
            if namespace == "tenant":
                result.tenant_record.append(found.name)
            elif result.public_record:
                result.public_record.append(found.name)
            continue
        if namespace == "tenant":
            source = checked.reference or ""
            made = baseline.baseline(
                url, source, ledger_table=config.migrations_table, data_tables=list(include_rows)
            )
            sql, warnings = made.sql, list(made.warnings)
            _what_new_tenants_miss(conn, config, checked, include_rows, result)
        else:
            source = PUBLIC
            sql, warnings = _public_sql(conn, config, url)
        path = baseline_path(mset.directory, namespace, history)
        texts[path] = baseline_text(sql, namespace, source, history, now)
        result.baselines.append(str(path))
        result.warnings += warnings
        name = path.stem.partition(":")[2] or path.stem
        if namespace == "tenant":
            result.tenant_record.append(name)
        elif result.public_record:
            result.public_record.append(name)
    return texts


def _what_new_tenants_miss(
    conn: Connection,
    config: Config,
    checked: Checked,
    include_rows: Sequence[str],
    result: AdoptResult,
) -> None:
    """The reference's tables with rows the baseline leaves out, the legacy files that
    look like they wrote rows, and the tenants whose structure is not the reference's
    (the catalog fingerprint, read without locks)."""
    source = checked.reference or ""
    legacy_tables = [config.migrations_table, adoption.retired(config.migrations_table)]
    filled = adoption.tables_with_rows(conn, source, legacy_tables)
    result.rows_left = [t for t in filled if t not in include_rows]
    result.data_migrations = data_migrations(checked.history["tenant"])
    prints = catalog.fingerprints(conn, result.schemas, exclude=legacy_tables)
    result.differ = sorted(s for s in result.schemas if prints.get(s) != prints.get(source))


def _public_sql(conn: Connection, config: Config, url: str) -> tuple[str, list[str]]:
    """The public schema's structure without mtm's tables and the original tool's."""
    names = [config.tenant_table, config.domain_table, config.migrations_table, config.state_table]
    names += [f"{config.migrations_table}_{x}" for x in ("version", "repairs", "adoption")]
    names += [adoption.retired(config.tenant_table), adoption.retired(config.migrations_table)]
    names += adoption.owned_sequences(conn, PUBLIC, names)
    program = baseline.find_pg_dump(adoption.server_major(conn))
    dump = baseline.dump_schema(url, PUBLIC, pg_dump=program, exclude_tables=names)
    return baseline.neutralize(dump, PUBLIC)


def _write(config: Config, texts: dict[Path, str]) -> MigrationSet:
    """Write the baselines (each whole or not at all) and read the folder again; a
    baseline mtm could not run as written is removed again, and refused."""
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name("." + path.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    try:
        return discover(config.migrations_directory)
    except MigrationFileError as exc:
        for path in texts:
            path.unlink(missing_ok=True)
        raise MtmError(
            f"the baseline written from the reference cannot run as is: {exc.message}"
        ) from None


def _move(
    conn: Connection,
    config: Config,
    mset: MigrationSet,
    legacy: adoption.LegacyDatabase,
    checked: Checked,
    result: AdoptResult,
) -> None:
    """The registry and public in one transaction, then each tenant schema in its own,
    then the marker goes."""
    record = _record(mset, "tenant", checked)
    if legacy.unfinished is None:
        moves = [(m.schema, m.domains, m.created_at, m.updated_at) for m in checked.moves]
        script = adoption.registry_script(
            config,
            moves,
            _record(mset, "public", checked),
            PUBLIC in legacy.ledgers,
            result.schemas,
        )
        _run(conn, script, PUBLIC)
        roles.grant_registry_read(conn, config)
        log.info(
            "moved %d tenants into mtm's registry",
            len(moves),
            extra={"event": "adopt.registry", "schema": PUBLIC, "tenants": len(moves)},
        )
    for schema in result.schemas:
        _run(conn, adoption.tenant_script(config, schema, record, schema in legacy.ledgers), schema)
        log.info(
            "adopted %s",
            schema,
            extra={"event": "adopt.schema", "schema": schema, "recorded": len(record)},
        )
    run_script(conn, adoption.finish_script(config))


def _run(conn: Connection, script: list[str], schema: str) -> None:
    """One transaction of the adoption; a failure is one line (it rolled back whole)."""
    try:
        run_script(conn, script)
    except (psycopg.Error, sa.exc.DBAPIError) as exc:
        rollback_quietly(conn)
        what = "the registry and public" if schema == PUBLIC else f"schema {schema}"
        raise MtmError(
            f"adopting {what} failed: {step_error(exc, None).message}; it was rolled back "
            "(what was adopted before stays): run 'mtm adopt' again"
        ) from None


def _record(mset: MigrationSet, namespace: Namespace, checked: Checked) -> list[Migration]:
    """What each schema of a namespace records as adopted: its history and baseline."""
    history = [m for m in checked.history[namespace]]
    found = mset.baseline(namespace)
    return [*history, found] if history and found is not None else history
