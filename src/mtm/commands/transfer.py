"""Commands that move a tenant between databases: ``export_tenant``, ``import_tenant``.

The export file (``tenantfile``) carries the schema's dump with the registry row, the
domains and the ledger. An import is one transaction (``transfer.import_schema``): a
refusal or a failure leaves the target as it was. A tenant whose ledger is behind the
target's files is then brought to head like ``mtm migrate --tenant``; one ahead of
them, or with migrations they do not have, is refused before anything is restored.
Seeds never run on import, and roles are not carried (they belong to the server).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path

import psycopg
from sqlalchemy.engine import Connection

from .. import pgclient, roles, tenantfile, transfer
from ..config import Config
from ..database import resolve_url
from ..errors import MtmError, UsageError, ValidationFailed, insufficient_privilege
from ..identifiers import validate_domains, validate_schema_name
from ..ledger import read_ledgers
from ..locks import hold_schema, release_schema
from ..migrations import discover
from ..plan import LedgerRow, fingerprint, plan_from_ledger
from ..registry import Tenant
from ..results import ExportResult, ImportResult
from ..tables import VERSION, ensure_bootstrap
from .base import session
from .lifecycle import registered
from .migrate import migrate
from .tenants import refuse_taken

log = logging.getLogger("mtm.tenant")


def export_tenant(
    config: Config, tenant: str, file: str | PathLike[str], *, pg_dump: str | None = None
) -> ExportResult:
    """Write tenant ``tenant`` to ``file``: its schema's dump (data and ledger included),
    its registry row and domains. ``pg_dump``: the program to use (by default one of
    the server's major version is looked for).

    The session holds the tenant's schema lock meanwhile: a migrate step, a domain
    change, a rename or a drop of this tenant waits for the export, so the file shows
    one moment of it. The file is written under another name and moved into place.
    """
    started = time.perf_counter()
    path = Path(file)
    if path.exists():
        raise UsageError(f"{path} already exists: name a new file (mtm never overwrites one)")
    if not path.parent.is_dir():
        raise UsageError(f"no folder {path.parent} to write {path.name} in")
    with session(config, purpose="mtm export") as (_, conn):
        schema = registered(conn, config, tenant).schema
        hold_schema(conn, schema)
        try:
            found = registered(conn, config, schema)  # again: dropped or renamed meanwhile?
            version = transfer.server_version(conn)
            program = _program("pg_dump", pg_dump, version // 10000)
            manifest = _manifest(conn, config, found, version)
            try:
                with tempfile.TemporaryDirectory(prefix=".mtm-export-", dir=path.parent) as tmp:
                    dump_file = Path(tmp) / tenantfile.DUMP
                    transfer.dump(resolve_url(config), schema, program, dump_file)
                    tenantfile.write(path, manifest, dump_file)
            except OSError as exc:
                raise MtmError(
                    f"tenant {schema!r} was not exported: writing in {path.parent} failed: "
                    f"{exc.strerror or exc}"
                ) from None
        finally:
            release_schema(conn, schema)
    seconds = time.perf_counter() - started
    log.info(
        "exported tenant %s",
        schema,
        extra={"event": "tenant.export", "schema": schema, "duration_ms": round(1000 * seconds)},
    )
    size = path.stat().st_size
    ledger = manifest.ledger
    return ExportResult(
        schema, path, manifest.applied, len(ledger), manifest.domains, size, program, seconds
    )


def _manifest(conn: Connection, config: Config, found: Tenant, version: int) -> tenantfile.Manifest:
    """What the file says besides the dump, read under the tenant's schema lock."""
    schema = found.schema
    ledger: list[tuple[str, str | None]] = sorted(
        (r.name, r.checksum) for r in read_ledgers(conn, config, [schema])[schema]
    )
    domains = [d for d in found.domains if d == found.primary_domain]
    domains += [d for d in found.domains if d != found.primary_domain]
    return tenantfile.Manifest(
        schema=schema,
        name=found.name,
        domains=domains,
        tables_version=VERSION,
        ledger_table=config.migrations_table,
        ledger=ledger,
        fingerprint=fingerprint((n, c) for n, c in ledger if c is not None),
        applied=max((n for n, _ in ledger), default=None),
        server_version=version,
        pg_dump_version=version // 10000,
        exported_at=datetime.now(UTC).isoformat(),
        created_at=found.created_at.isoformat() if found.created_at else None,
        role=roles.owned_role(conn, config, schema),
    )


def _program(name: str, given: str | None, major: int) -> str:
    """``given`` if it is ``name`` of that major version, else one found on this machine."""
    if given is None:
        return pgclient.find(name, major)
    got = pgclient.version(given)
    if got != major:
        raise UsageError(
            f"{given} is not a {name} for PostgreSQL {major} (it reports "
            f"{got if got is not None else 'nothing'}): pass one of version {major}"
        )
    return given


def import_tenant(
    config: Config,
    file: str | PathLike[str],
    *,
    as_name: str | None = None,
    domains: Sequence[str] | None = None,
    pg_restore: str | None = None,
) -> ImportResult:
    """Restore the tenant of an export ``file`` into this database, as ``as_name`` (by
    default its name in the file), with ``domains`` (by default the file's, its primary
    first), in one transaction; then bring it to head if the file is behind.

    Refused before anything is restored: a file that is not an export, a name or a
    domain already taken (the owner named), a ledger ahead of this project's files
    or with migrations they lack.
    """
    started = time.perf_counter()
    path = Path(file)
    given = validate_domains(domains) if domains is not None else None
    new = validate_schema_name(as_name) if as_name is not None else None
    with tempfile.TemporaryDirectory(prefix="mtm-import-") as tmp:
        manifest, dump_file = tenantfile.read(path, Path(tmp))
        schema = new if new is not None else validate_schema_name(manifest.schema)
        hosts = given if given is not None else validate_domains(manifest.domains)
        pending = _plan(config, manifest, path, schema)
        with session(config, purpose="mtm import") as (_, conn):
            ensure_bootstrap(conn, config)
            _refuse_taken(conn, config, schema, hosts)
            major = transfer.server_version(conn) // 10000
            program = _program(
                "pg_restore",
                pg_restore,
                transfer.restore_major(major, manifest.pg_dump_version),
            )
            warnings = _restore(conn, config, manifest, dump_file, program, schema, hosts)
    log.info(
        "imported tenant %s from %s",
        schema,
        path.name,
        extra={
            "event": "tenant.import",
            "schema": schema,
            "source_schema": manifest.schema,
            "applied": manifest.applied,
            "duration_ms": round(1000 * (time.perf_counter() - started)),
        },
    )
    result = ImportResult(
        schema, manifest.schema, path, hosts, manifest.applied, [], warnings, manifest.role, program
    )
    if pending:
        _to_head(config, schema, manifest.applied)
        result.migrated = pending
    result.seconds = time.perf_counter() - started
    return result


def _plan(config: Config, manifest: tenantfile.Manifest, path: Path, schema: str) -> list[str]:
    """Refuse a file that mtm's tables or this project's files cannot take; the
    migrations it has to catch up on."""
    if manifest.tables_version != VERSION:
        newer = manifest.tables_version > VERSION
        raise UsageError(
            f"{path} was exported by {'a newer' if newer else 'an older'} mtm (its tables "
            f"are version {manifest.tables_version}, this mtm's {VERSION}): import it with "
            f"{'a newer mtm' if newer else 'that mtm, run mtm migrate, and export it again'}"
        )
    files = discover(config.migrations_directory).tenant
    rows = [LedgerRow(n, c) for n, c in manifest.ledger]  # type: ignore[arg-type]
    plan = plan_from_ledger(schema, "tenant", files, rows)
    if plan.problems:
        first = plan.problems[0].split(": ", 1)[-1]
        more = f" (and {len(plan.problems) - 1} more)" if len(plan.problems) > 1 else ""
        raise ValidationFailed(
            f"{path} was not imported: tenant {manifest.schema!r} is ahead of this project's "
            f"migrations or has some they do not: {first}{more}; import it where the "
            "migrations folder has what it applied (nothing was imported)"
        )
    return [m.name for m in plan.pending]


def _refuse_taken(conn: Connection, config: Config, schema: str, domains: list[str]) -> None:
    refuse_taken(
        conn,
        config,
        schema,
        domains,
        name_hint=": import it under another name (--as)",
        domain_hint=": import with --domain to give the tenant other domains",
    )


def _restore(
    conn: Connection,
    config: Config,
    manifest: tenantfile.Manifest,
    dump_file: Path,
    program: str,
    schema: str,
    hosts: list[str],
) -> list[str]:
    """The import transaction, its failure said in one line (nothing is left of it)."""
    try:
        return transfer.import_schema(conn, config, manifest, dump_file, program, schema, hosts)
    except psycopg.Error as exc:
        refused = insufficient_privilege(exc)
        if refused is not None:
            raise refused from None
        _refuse_taken(conn, config, schema, hosts)  # a create or import that raced us
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MtmError(
            f"tenant {schema!r} was not imported: {reason} (nothing was left behind)"
        ) from None
    except MtmError as exc:
        raise MtmError(
            f"tenant {schema!r} was not imported: {exc.message} (nothing was left behind)"
        ) from None


def _to_head(config: Config, schema: str, applied: str | None) -> None:
    """Bring an imported tenant that was behind to head, as ``mtm migrate`` would."""
    at = applied or "no migration"
    try:
        result = migrate(config, tenants=[schema])
    except MtmError as exc:
        raise MtmError(
            f"tenant {schema!r} was imported at {at}, but bringing it to head was refused: "
            f"{exc.message}; run 'mtm migrate --tenant {schema}'"
        ) from None
    if not result.ok:
        failed = result.failures[0]
        raise MtmError(
            f"tenant {schema!r} was imported at {at}, but migration "
            f"{failed.failed_migration} failed: {failed.error}; fix it and run 'mtm migrate'"
        )
