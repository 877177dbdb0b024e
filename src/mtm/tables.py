"""mtm's own tables: their DDL, their version, upgrading them in place.

mtm keeps the tenant registry and its domains, a ledger in every schema, the state
summary, an audit of checksum repairs and a version marker. The marker is a table,
``public.<migrations_table>_version``, one row per version the tables reached; the
highest is the version. A database with mtm's tables but no marker was made before
versions existed: version 1. Every command checks the version before it reads anything
and refuses a database that is older (``mtm migrate`` upgrades it) or newer (made by a
newer mtm) than this code. Fresh databases are created directly at ``VERSION``.

A table that carries one of mtm's names but not its shape was made by another tool
(the original multi-tenant-migrate, by hand): it is refused before anything changes.

The per-schema ledger's own DDL stays in ``ledger.py`` (tenant creation uses it);
this module adds every table in public and upgrades every ledger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from . import roles, sqlrun, steps
from .config import Config
from .database import rollback_quietly, run_script
from .errors import MtmError, TablesRefused, adoption_unfinished, made_by_another_tool
from .identifiers import quote_ident
from .ledger import HAS_CHECKSUM, PUBLIC, ledger_ddl, ledger_ref, state_ref
from .locks import schema_lock_sql
from .registry import domain_ref, tenant_ref
from .results import TablesUpgrade
from .sqlrun import Conn

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger("mtm.tables")

# The version of mtm's own tables this code creates and expects.
VERSION = 2

# What each of mtm's tables is, the config key that renames it, and the columns that
# make a table of that name recognisably mtm's (those of version 1, so that an older
# mtm's table is not taken for another tool's).
_SHAPES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "registry": ("tenant registry", "tenant_table", ("schema_name", "name", "created_at")),
    "domains": ("domain table", "tenant_table", ("domain", "schema_name")),
    "state": ("state summary", "migrations_table", ("schema_name", "namespace", "fingerprint")),
    "ledger": ("ledger", "migrations_table", ("name", "checksum", "applied_at")),
    "version": ("version marker", "migrations_table", ("version",)),
    "repairs": ("repair audit", "migrations_table", ("schema_name", "migration", "new_checksum")),
    # While ``mtm adopt`` is unfinished: the schemas it has still to adopt.
    "adoption": ("adoption marker", "migrations_table", ("schema_name",)),
}


def version_ref(config: Config) -> str:
    return f"{quote_ident(PUBLIC)}.{quote_ident(config.migrations_table + '_version')}"


def repairs_ref(config: Config) -> str:
    return f"{quote_ident(PUBLIC)}.{quote_ident(config.migrations_table + '_repairs')}"


def _refs(config: Config) -> dict[str, str]:
    return {
        "registry": tenant_ref(config),
        "domains": domain_ref(config),
        "state": state_ref(config),
        "ledger": ledger_ref(config, PUBLIC),
        "version": version_ref(config),
        "repairs": repairs_ref(config),
        "adoption": adoption_ref(config),
    }


def adoption_ref(config: Config) -> str:
    return f"{quote_ident(PUBLIC)}.{quote_ident(config.migrations_table + '_adoption')}"


# --- DDL at the newest version -----------------------------------------------------------


def primary_index(config: Config) -> str:
    return quote_ident(f"{config.domain_table}_primary_idx")


def registry_ddl(config: Config) -> list[str]:
    index = quote_ident(f"{config.domain_table}_schema_name_idx")
    return [
        f"CREATE TABLE IF NOT EXISTS {tenant_ref(config)} ("
        "schema_name text PRIMARY KEY CHECK (schema_name ~ '^[a-z_][a-z0-9_]*$' "
        "AND octet_length(schema_name) <= 63), "
        "name text, "
        "created_at timestamptz NOT NULL DEFAULT now(), "
        "updated_at timestamptz NOT NULL DEFAULT now())",
        f"CREATE TABLE IF NOT EXISTS {domain_ref(config)} ("
        "domain text PRIMARY KEY CHECK (domain = lower(domain) AND length(domain) <= 253), "
        f"schema_name text NOT NULL REFERENCES {tenant_ref(config)} (schema_name) "
        "ON DELETE CASCADE ON UPDATE CASCADE, "
        "created_at timestamptz NOT NULL DEFAULT now(), "
        "is_primary boolean NOT NULL DEFAULT false)",
        f"CREATE INDEX IF NOT EXISTS {index} ON {domain_ref(config)} (schema_name)",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {primary_index(config)} "
        f"ON {domain_ref(config)} (schema_name) WHERE is_primary",
    ]


def state_ddl(config: Config) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {state_ref(config)} ("
        "schema_name text PRIMARY KEY, namespace text NOT NULL, applied integer NOT NULL, "
        "last_migration text, fingerprint text NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now())"
    )


def repairs_ddl(config: Config) -> str:
    """Who re-recorded which checksum, when: the audit ``mtm repair`` writes."""
    return (
        f"CREATE TABLE IF NOT EXISTS {repairs_ref(config)} ("
        "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "schema_name text NOT NULL, migration text NOT NULL, "
        "old_checksum text, new_checksum text NOT NULL, "
        "repaired_at timestamptz NOT NULL DEFAULT now(), "
        "repaired_by text NOT NULL DEFAULT current_user)"
    )


def version_ddl(config: Config) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {version_ref(config)} ("
        "version integer PRIMARY KEY CHECK (version > 0), "
        "reached_at timestamptz NOT NULL DEFAULT now(), "
        "reached_by text NOT NULL DEFAULT current_user)",
        f"INSERT INTO {version_ref(config)} (version) VALUES ({VERSION}) "
        "ON CONFLICT (version) DO NOTHING",
    ]


def create_sql(config: Config) -> list[str]:
    """Every public table at the newest version (idempotent: IF NOT EXISTS)."""
    return [
        *registry_ddl(config),
        state_ddl(config),
        ledger_ddl(config, PUBLIC),
        repairs_ddl(config),
        *version_ddl(config),
    ]


# --- what the database holds -------------------------------------------------------------


@dataclass(frozen=True)
class Tables:
    """Which of mtm's public tables exist, and their version (0: none exists)."""

    exists: dict[str, bool]
    version: int

    def __getitem__(self, key: str) -> bool:
        return self.exists[key]

    @property
    def complete(self) -> bool:
        return all(v for k, v in self.exists.items() if k != "adoption")


def inspect(conn: Conn, config: Config) -> Tables:
    """Two catalog queries: mtm's public tables and their columns, then the version.

    Refuses (``TablesRefused``) any table with one of mtm's names but not its shape.
    """
    refs = _refs(config)
    keys = list(refs)
    rows = sqlrun.rows(
        conn,
        "SELECT k, c.relkind, ARRAY(SELECT a.attname::text FROM pg_attribute a "
        "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) "
        "FROM unnest(CAST(%(keys)s AS text[]), CAST(%(refs)s AS text[])) AS x(k, r) "
        "JOIN pg_class c ON c.oid = to_regclass(x.r)",
        {"keys": keys, "refs": [refs[k] for k in keys]},
    )
    found = {r[0]: (r[1], set(r[2])) for r in rows}
    foreign = [
        k
        for k in keys
        if k in found and (found[k][0] not in ("r", "p") or not set(_SHAPES[k][2]) <= found[k][1])
    ]
    if foreign:
        raise made_by_another_tool(
            [(refs[k], _SHAPES[k][0]) for k in foreign], [_SHAPES[k][1] for k in foreign]
        )
    exists = {k: k in found for k in keys}
    if exists["adoption"]:
        raise adoption_unfinished()
    if exists["version"]:
        query = f"SELECT max(version) FROM {version_ref(config)}"
        version = int(sqlrun.scalar(conn, query) or 0)
    else:
        version = 1 if any(exists.values()) else 0
    return Tables(exists, version)


def refuse_foreign_ledgers(
    conn: Conn, config: Config, schemas: Sequence[str] | None = None
) -> None:
    """Refuse tables named like the ledger that another tool made, in ``schemas`` (None:
    every registered tenant's). One catalog query, an index probe per ledger: ``migrate``
    asks it only of the schemas it is about to change."""
    if schemas is not None and not schemas:
        return
    among = (
        "n.nspname = ANY(CAST(%(s)s AS name[]))"
        if schemas is not None
        else f"EXISTS (SELECT 1 FROM {tenant_ref(config)} t WHERE t.schema_name = n.nspname)"
    )
    params: dict[str, object] = {"l": config.migrations_table}
    if schemas is not None:
        params["s"] = list(schemas)
    bad = sqlrun.rows(
        conn,
        # relname = name(%(l)s), not text: the catalog's index on relname is used
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relname = CAST(%(l)s AS name) AND n.nspname <> 'public' AND {among} "
        f"AND (c.relkind NOT IN ('r', 'p') OR NOT {HAS_CHECKSUM}) "
        "ORDER BY 1 LIMIT 5",
        params,
    )
    refs = [(ledger_ref(config, r[0]), "ledger") for r in bad]
    if refs:
        raise made_by_another_tool(refs, ["migrations_table"])


def refuse_other_versions(tables: Tables) -> None:
    """Refuse tables older than this code (``mtm migrate`` upgrades them) or newer."""
    if tables.version > VERSION:
        raise TablesRefused(
            f"mtm's tables in this database are version {tables.version}, made by a newer "
            f"mtm (this one knows up to version {VERSION}); upgrade mtm"
        )
    if 0 < tables.version < VERSION:
        raise TablesRefused(
            f"mtm's tables in this database are version {tables.version} and this mtm "
            f"needs version {VERSION}; run 'mtm migrate' to upgrade them"
        )


def check(conn: Conn, config: Config) -> Tables:
    """What every command does before it reads mtm's tables: refuse foreign tables and
    a version other than this code's; a database without mtm's tables is fine."""
    tables = inspect(conn, config)
    refuse_other_versions(tables)
    return tables


def existing(conn: Conn, config: Config) -> dict[str, bool]:
    """Which of mtm's public tables exist (refusing foreign ones)."""
    return dict(inspect(conn, config).exists)


def ensure_bootstrap(conn: Connection, config: Config) -> None:
    """Create mtm's public tables at the newest version if any is missing.

    A database with older tables is refused (only ``mtm migrate`` upgrades).
    """
    _complete(conn, config, check(conn, config))


def _complete(conn: Connection, config: Config, tables: Tables) -> None:
    """Create what is missing of tables found at the newest version (or none), and let
    ``tenant_role_member`` read the registry."""
    if not (tables.complete and tables.version == VERSION):
        run_script(conn, ["BEGIN", schema_lock_sql(PUBLIC), *create_sql(config), "COMMIT"])
    roles.grant_registry_read(conn, config)


# --- upgrading in place ------------------------------------------------------------------


@dataclass(frozen=True)
class UpgradeStep:
    """The statements that bring tables of version ``version - 1`` to ``version``.

    Each is idempotent (IF NOT EXISTS, guarded updates) so that a step that finds part
    of its work done does the rest. ``sql(config, tables, ledgers)`` gets which public
    tables exist and the quoted name of every ledger to upgrade.
    """

    version: int
    what: str
    sql: Callable[[Config, Tables, Sequence[str]], list[str]]


def _to_v2(config: Config, tables: Tables, ledgers: Sequence[str]) -> list[str]:
    out: list[str] = []
    if tables["domains"]:
        d = domain_ref(config)
        out += [
            f"ALTER TABLE {d} ADD COLUMN IF NOT EXISTS is_primary boolean NOT NULL DEFAULT false",
            # Each tenant's first domain (oldest, then first inserted) becomes its primary.
            f"UPDATE {d} SET is_primary = true WHERE ctid IN (SELECT DISTINCT ON (x.schema_name) "
            f"x.ctid FROM {d} x WHERE NOT EXISTS (SELECT 1 FROM {d} p WHERE "
            "p.schema_name = x.schema_name AND p.is_primary) "
            "ORDER BY x.schema_name, x.created_at, x.ctid)",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {primary_index(config)} ON {d} (schema_name) "
            "WHERE is_primary",
        ]
    out.append(repairs_ddl(config))
    out += [
        f"ALTER TABLE {ref} ALTER COLUMN checksum DROP NOT NULL, "
        "ADD COLUMN IF NOT EXISTS adopted boolean NOT NULL DEFAULT false"
        for ref in ledgers
    ]
    return out


STEPS: tuple[UpgradeStep, ...] = (
    UpgradeStep(
        2,
        "ledgers: nullable checksum, adopted flag; repair audit; primary domain",
        _to_v2,
    ),
)


def bring_up_to_date(
    conn: Connection, config: Config, *, dry_run: bool, lock_timeout: str | None
) -> TablesUpgrade | None:
    """What ``mtm migrate`` does first, under its run lock: refuse foreign or newer
    tables, create missing ones at the newest version, upgrade older ones in one
    transaction. In a dry run, only says whether an upgrade is pending."""
    tables = inspect(conn, config)
    if tables.version > VERSION:
        refuse_other_versions(tables)
    if tables.version in (0, VERSION):
        if not dry_run:
            _complete(conn, config, tables)  # already inspected: no second catalog read
        return None
    if tables["registry"]:
        refuse_foreign_ledgers(conn, config)  # before every ledger is changed
    if dry_run:
        ledgers = len(_ledger_schemas(conn, config))
        return TablesUpgrade(tables.version, VERSION, ledgers, done=False)
    upgrade = _upgrade(conn, config, lock_timeout)
    roles.grant_registry_read(conn, config)
    return upgrade


def _ledger_schemas(conn: Connection, config: Config) -> list[str]:
    """Every schema holding a table named like the ledger with the ledger's shape
    (registered tenants, public, and schemas left without a registry row)."""
    rows = sqlrun.rows(
        conn,
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = CAST(%(l)s AS name) AND c.relkind IN ('r', 'p') "
        "AND (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid "
        "AND NOT a.attisdropped AND a.attname IN ('name', 'checksum', 'applied_at')) = 3 "
        'ORDER BY n.nspname COLLATE "C"',
        {"l": config.migrations_table},
    )
    return [r[0] for r in rows]


def _refuse_beyond_lock_table(conn: Connection, ledgers: int) -> None:
    """One transaction locks every ledger: refuse up front if the server's lock table
    cannot hold that many (PostgreSQL would fail midway with 'out of shared memory')."""
    row = sqlrun.rows(
        conn,
        "SELECT current_setting('max_locks_per_transaction')::int, "
        "current_setting('max_connections')::int + "
        "current_setting('max_prepared_transactions')::int",
    )[0]
    needed = ledgers + 100
    if needed > row[0] * row[1]:
        raise TablesRefused(
            f"upgrading mtm's tables locks {ledgers:,} ledgers in one transaction, more than "
            f"this server's lock table holds ({row[0]} max_locks_per_transaction x {row[1]} "
            f"connections); set max_locks_per_transaction to at least "
            f"{-(-needed // row[1])}, restart PostgreSQL and run 'mtm migrate' again"
        )


def _upgrade(conn: Connection, config: Config, lock_timeout: str | None) -> TablesUpgrade | None:
    """Every step from the tables' version to ``VERSION``, public tables and every
    ledger, in one transaction under the public schema's lock."""
    started = time.perf_counter()
    # The one frame of a change to a schema (public's lock, its lock_timeout), without
    # a state row; the upgrade's statements are built once the tables are read under it.
    framed = steps.frame(
        config, PUBLIC, "public", timeouts=steps.Timeouts(lock=lock_timeout), state=None
    )
    import sqlalchemy as sa  # the connection is SQLAlchemy's: only ``migrate`` upgrades

    from_version = 0
    try:
        run_script(conn, framed.head)
        tables = inspect(conn, config)  # again, under the lock
        from_version = tables.version
        if tables.version >= VERSION:
            run_script(conn, framed.tail)
            return None
        schemas = _ledger_schemas(conn, config)
        _refuse_beyond_lock_table(conn, len(schemas))
        refs = [ledger_ref(config, s) for s in schemas]
        statements = [
            s
            for step in STEPS
            if step.version > tables.version
            for s in step.sql(config, tables, refs)
        ]
        statements += create_sql(config)  # any table still missing, and the version row
        run_script(conn, [*statements, *framed.tail])
    except MtmError:
        rollback_quietly(conn)
        raise
    except (psycopg.Error, sa.exc.DBAPIError) as exc:
        rollback_quietly(conn)
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise MtmError(
            f"upgrading mtm's tables from version {from_version or '?'} to {VERSION} failed: "
            f"{reason}; nothing was changed; run 'mtm migrate' again"
        ) from None
    except BaseException:
        rollback_quietly(conn)
        raise
    seconds = time.perf_counter() - started
    log.info(
        "upgraded mtm's tables from version %s to %s (%s ledgers)",
        from_version,
        VERSION,
        len(schemas),
        extra={
            "event": "tables.upgrade",
            "from_version": from_version,
            "to_version": VERSION,
            "ledgers": len(schemas),
            "duration_ms": round(seconds * 1000, 1),
        },
    )
    return TablesUpgrade(from_version, VERSION, len(schemas), done=True, seconds=seconds)
