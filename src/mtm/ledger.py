"""The per-schema ledger of applied migrations, and its summary in the public schema.

Every schema (public included) has a ledger table (``migrations_table``): one row per
applied migration with its checksum, when it was applied and how long it took. The
ledger is the source of truth. The state table in public keeps one row per schema
(count, newest name, fingerprint) and is rewritten from the ledger in the same
transaction as every step, so it can never say more than the ledger does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from . import sqlrun
from .config import Config
from .errors import made_by_another_tool
from .identifiers import quote_ident, quote_literal
from .migrations import Migration, Namespace
from .plan import LedgerRow
from .registry import tenant_ref
from .sqlrun import Conn

PUBLIC = "public"

# Whether the relation ``c`` (of pg_class) has the ledger's checksum column: a ledger
# without one is another tool's. A scalar subquery, an index probe per relation: written
# as EXISTS, the server hashed it into a scan of all of pg_attribute (830,000 rows at
# 10,000 tenants): ``existing_ledgers`` of 10,000 schemas took 76 ms instead of 46.
HAS_CHECKSUM = (
    "(SELECT true FROM pg_attribute a WHERE a.attrelid = c.oid "
    "AND a.attname = 'checksum' AND NOT a.attisdropped) IS NOT NULL"
)


@dataclass(frozen=True)
class AppliedMigration:
    name: str
    checksum: str
    applied_at: datetime
    duration_ms: float | None


def ledger_ref(config: Config, schema: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(config.migrations_table)}"


def ledger_ddl(config: Config, schema: str) -> str:
    """A ledger at the newest version of mtm's tables (``tables.VERSION``).

    ``checksum`` is NULL for a migration recorded without one to verify (adopted from
    another tool, ``adopted`` true); ``tables.py`` upgrades older ledgers.
    """
    return (
        f"CREATE TABLE IF NOT EXISTS {ledger_ref(config, schema)} ("
        "name text PRIMARY KEY, checksum text, "
        "applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
        "duration_ms double precision, adopted boolean NOT NULL DEFAULT false)"
    )


# One ledger row in a fingerprint (``plan.fingerprint``): an adopted row has no checksum,
# and counts as "name:" rather than vanishing from the fingerprint.
FINGERPRINT_ITEM = "name || ':' || coalesce(checksum, '')"
# A ledger's fingerprint, computed by the server over its rows (``plan.fingerprint``).
FINGERPRINT_SQL = (
    f"md5(coalesce(string_agg({FINGERPRINT_ITEM}, ',' ORDER BY name COLLATE \"C\"), ''))"
)


def state_ref(config: Config) -> str:
    return f"{quote_ident(PUBLIC)}.{quote_ident(config.state_table)}"


def insert_sql(config: Config, schema: str, migration: Migration) -> str:
    """A ledger row recorded without running anything (``create --existing``, adopt)
    or after a no-transaction migration's statements: ``applied_at`` is the
    transaction's start, no duration."""
    if migration.legacy:  # superseded by the baseline that follows it: no checksum
        return (
            f"INSERT INTO {ledger_ref(config, schema)} (name, checksum, adopted) "
            f"VALUES ({quote_literal(migration.name)}, NULL, true)"
        )
    return (
        f"INSERT INTO {ledger_ref(config, schema)} (name, checksum) VALUES "
        f"({quote_literal(migration.name)}, {quote_literal(migration.checksum)})"
    )


def insert_finished_sql(config: Config, schema: str, migration: Migration) -> str:
    """A step's ledger row after its body, with its end time and duration, in one
    statement: the row cannot race with another run's (the step holds the schema's lock
    and checked the ledger under it), so nothing is gained by writing it earlier.
    One statement, and on a Citus cluster one trip to the worker. (Citus evaluates a
    volatile function in an INSERT's values, but refuses one in an UPDATE of a
    distributed table, and a subquery in the values.)"""
    now = "clock_timestamp()"
    checksum = "NULL" if migration.legacy else quote_literal(migration.checksum)
    return (
        f"INSERT INTO {ledger_ref(config, schema)} "
        "(name, checksum, adopted, applied_at, duration_ms) VALUES "
        f"({quote_literal(migration.name)}, {checksum}, {'true' if migration.legacy else 'false'}, "
        f"{now}, 1000 * extract(epoch FROM {now} - now()))"
    )


def delete_sql(config: Config, schema: str, name: str) -> str:
    return f"DELETE FROM {ledger_ref(config, schema)} WHERE name = {quote_literal(name)}"


def state_upsert_sql(config: Config, schema: str, namespace: Namespace) -> str:
    """Rewrite a schema's summary row from its ledger (must match ``plan.fingerprint``)."""
    return (
        f"INSERT INTO {state_ref(config)} AS s "
        "(schema_name, namespace, applied, last_migration, fingerprint, updated_at) "
        f"SELECT {quote_literal(schema)}, {quote_literal(namespace)}, count(*), "
        'max(name COLLATE "C"), '
        f"{FINGERPRINT_SQL}, now() FROM {ledger_ref(config, schema)} "
        "ON CONFLICT (schema_name) DO UPDATE SET namespace = excluded.namespace, "
        "applied = excluded.applied, last_migration = excluded.last_migration, "
        "fingerprint = excluded.fingerprint, updated_at = excluded.updated_at"
    )


def state_delete_sql(config: Config, schema: str) -> str:
    return f"DELETE FROM {state_ref(config)} WHERE schema_name = {quote_literal(schema)}"


def read_history(conn: Conn, config: Config, schema: str) -> list[AppliedMigration]:
    """A schema's ledger, oldest first."""
    rows = sqlrun.rows(
        conn,
        "SELECT name, coalesce(checksum, ''), applied_at, duration_ms "
        f"FROM {ledger_ref(config, schema)} "
        'ORDER BY applied_at, name COLLATE "C"',
    )
    return [AppliedMigration(r[0], r[1], r[2], r[3]) for r in rows]


def read_ledgers(
    conn: Conn, config: Config, schemas: Sequence[str], *, batch: int = 100
) -> dict[str, list[LedgerRow]]:
    """Many schemas' ledgers in a few queries (UNION ALL in batches), not one per schema.

    Schemas without a ledger table are returned with an empty list. Batches of 100:
    the server plans a UNION ALL in time that grows faster than its length (10,000
    ledgers read in 2.0-2.3 s in batches of 500, 1.3-1.5 s in batches of 100).
    """
    out: dict[str, list[LedgerRow]] = defaultdict(list)
    existing = existing_ledgers(conn, config, schemas)
    wanted = [s for s in schemas if s in existing]
    for i in range(0, len(wanted), batch):
        chunk = wanted[i : i + batch]
        sql = " UNION ALL ".join(
            f"SELECT {quote_literal(s)} AS schema_name, name, coalesce(checksum, '') "
            f"FROM {ledger_ref(config, s)}"
            for s in chunk
        )
        for schema, name, checksum in sqlrun.rows(conn, sql):
            out[schema].append(LedgerRow(name, checksum))
    return {s: out.get(s, []) for s in schemas}


def existing_ledgers(conn: Conn, config: Config, schemas: Iterable[str]) -> set[str]:
    """Which of ``schemas`` have a ledger table; refuses a table of that name that
    another tool made (it has no checksum column), before anything reads it."""
    rows = sqlrun.rows(
        conn,
        f"SELECT n.nspname, {HAS_CHECKSUM} "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %(t)s AND c.relkind IN ('r', 'p') AND n.nspname = ANY(%(s)s)",
        {"t": config.migrations_table, "s": list(schemas)},
    )
    foreign = [(ledger_ref(config, r[0]), "ledger") for r in rows if not r[1]]
    if foreign:
        raise made_by_another_tool(foreign[:5], ["migrations_table"])
    return {r[0] for r in rows}


def tenant_fingerprints(
    conn: Conn,
    config: Config,
    *,
    only: Sequence[str] | None = None,
    not_at: str | None = None,
    at: Sequence[str | None] | None = None,
    with_state: bool = True,
) -> list[tuple[str, str | None]]:
    """(schema, fingerprint) of registered tenants by name, from the state summary.

    ``not_at`` keeps those not at that fingerprint, which is how a run with nothing to
    do costs one query; ``at`` keeps those at one of these fingerprints (None: without
    a state row); without the state table (``with_state=False``) every fingerprint is
    None.
    """
    where: list[str] = []
    params: dict[str, object] = {}
    if only:
        where.append("t.schema_name = ANY(%(only)s)")
        params["only"] = list(only)
    if not_at is not None and with_state:
        where.append("s.fingerprint IS DISTINCT FROM %(fp)s")
        params["fp"] = not_at
    if at is not None and with_state:
        where.append("(s.fingerprint = ANY(%(at)s) OR (%(at_none)s AND s.fingerprint IS NULL))")
        params["at"] = [f for f in at if f is not None]
        params["at_none"] = None in at
    join = f"LEFT JOIN {state_ref(config)} s ON s.schema_name = t.schema_name"
    sql = (
        f"SELECT t.schema_name, {'s.fingerprint' if with_state else 'NULL'} "
        f"FROM {tenant_ref(config)} t {join if with_state else ''} "
        + ("WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY t.schema_name"
    )
    return [(r[0], r[1]) for r in sqlrun.rows(conn, sql, params)]


def fingerprint_counts(conn: Conn, config: Config) -> list[tuple[str | None, int]]:
    """How many registered tenants stand at each fingerprint of the state summary (None:
    no state row): a whole fleet in as many rows as it has positions."""
    sql = (
        f"SELECT s.fingerprint, count(*) FROM {tenant_ref(config)} t "
        f"LEFT JOIN {state_ref(config)} s ON s.schema_name = t.schema_name GROUP BY 1"
    )
    return [(r[0], int(r[1])) for r in sqlrun.rows(conn, sql)]


def read_states(conn: Conn, config: Config) -> dict[str, str]:
    """Every schema's fingerprint in the state summary."""
    rows = sqlrun.rows(conn, f"SELECT schema_name, fingerprint FROM {state_ref(config)}")
    return {r[0]: r[1] for r in rows}  # all at once: a row at a time took twice as long


def state_fingerprint(conn: Conn, config: Config, schema: str) -> str | None:
    """One schema's fingerprint in the state summary, None without a row."""
    sql = f"SELECT fingerprint FROM {state_ref(config)} WHERE schema_name = %(s)s"
    found = sqlrun.scalar(conn, sql, {"s": schema})
    return None if found is None else str(found)
