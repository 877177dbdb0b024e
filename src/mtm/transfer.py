"""Moving one tenant between databases: its dump on export, its one transaction on import.

Export runs ``pg_dump --format=custom`` of the tenant's schema with a pg_dump of the
server's major version, while the exporting session holds the schema's lock
(``locks.hold_schema``), so that the manifest read by mtm and the dump read by pg_dump
show the same ledger and registry row.

Import is one transaction on mtm's own connection, under the new name's schema lock:
``CREATE SCHEMA``, the dump's sections (``restore``), the ledger renamed to this
project's ``migrations_table`` if the source called it otherwise, a check that the
restored ledger is the manifest's (SQLSTATE MTM01 otherwise), the registry row (its
name and creation time kept), the domains (the first one primary), the state row,
``COMMIT``. Any failure rolls back all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import pgclient, restore
from .config import Config
from .database import rollback_quietly, run_script
from .identifiers import quote_ident, quote_literal
from .ledger import state_upsert_sql
from .locks import schema_lock_sql
from .registry import domains_insert_sql, tenant_ref
from .steps import expect_ledger_sql
from .tenantfile import Manifest


def server_version(conn: Connection) -> int:
    """The server's version as a number (``180001``); its major is ``// 10000``."""
    return int(conn.execute(sa.text("SHOW server_version_num")).scalar() or 0)


def dump(url: str, schema: str, pg_dump: str, target: Path) -> None:
    """``pg_dump`` of one schema, custom format, to ``target``."""
    dbname, env = pgclient.connection(url)
    pgclient.run(
        [
            pg_dump,
            "--format=custom",
            "--encoding=UTF8",
            "--no-owner",
            "--no-privileges",
            "--no-tablespaces",
            "--no-security-labels",
            "--schema=" + '"' + schema.replace('"', '""') + '"',
            f"--dbname={dbname}",
            f"--file={target}",
        ],
        f"pg_dump of schema {schema!r}",
        env=env,
    )


def restore_major(server_major: int, dump_major: int) -> int:
    """The pg_restore to read an archive for a server: the server's own version, unless
    the archive was written by a newer pg_dump, which only a pg_restore as new reads."""
    return max(server_major, dump_major)


def begin_sql(schema: str) -> list[str]:
    """The import transaction's start: the new name's lock, the settings the dump's SQL
    expects (its own SETs are dropped with the rest of its session settings), the schema."""
    return [
        "BEGIN",
        schema_lock_sql(schema),
        "SET LOCAL client_encoding = 'UTF8'",
        f"SET LOCAL search_path TO {quote_ident(schema)}",
        "SET LOCAL check_function_bodies = false",
        f"CREATE SCHEMA {quote_ident(schema)}",
    ]


def register_sql(
    config: Config, manifest: Manifest, schema: str, domains: Sequence[str]
) -> list[str]:
    """The import transaction's end: the ledger under this project's name, checked to be
    the manifest's, the registry row, the domains, the state row, ``COMMIT``."""
    out: list[str] = []
    if manifest.ledger_table != config.migrations_table:
        source = f"{quote_ident(schema)}.{quote_ident(manifest.ledger_table)}"
        out.append(f"ALTER TABLE {source} RENAME TO {quote_ident(config.migrations_table)}")
    name = quote_literal(manifest.name) if manifest.name is not None else "NULL"
    out += [
        expect_ledger_sql(config, schema, manifest.fingerprint),
        f"INSERT INTO {tenant_ref(config)} (schema_name, name, created_at) VALUES "
        f"({quote_literal(schema)}, {name}, {_created_at(manifest)})",
    ]
    if domains:
        out.append(domains_insert_sql(config, schema, list(domains)))
    return [*out, state_upsert_sql(config, schema, "tenant"), "COMMIT"]


def _created_at(manifest: Manifest) -> str:
    created = manifest.created_at
    return f"{quote_literal(created)}::timestamptz" if created is not None else "now()"


def import_schema(
    conn: Connection,
    config: Config,
    manifest: Manifest,
    dump_file: Path,
    pg_restore: str,
    schema: str,
    domains: Sequence[str],
) -> list[str]:
    """Restore and register the tenant as ``schema`` in one transaction; the warnings of
    the neutralizer (a function body that names the source schema). Nothing is left
    behind if it fails."""
    source = manifest.schema
    try:
        run_script(conn, begin_sql(schema))
        warnings = restore.restore_ddl(
            conn, restore.section_sql(pg_restore, dump_file, "pre-data"), source
        )
        restore.restore_data(conn, pg_restore, dump_file, source)
        warnings += restore.restore_ddl(
            conn, restore.section_sql(pg_restore, dump_file, "post-data"), source
        )
        run_script(conn, register_sql(config, manifest, schema, domains))
    except BaseException:
        rollback_quietly(conn)
        raise
    return warnings
