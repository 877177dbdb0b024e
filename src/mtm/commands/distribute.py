"""``mtm distribute``: turn a single-server fleet's tenant schemas into distributed schemas.

One tenant at a time, each in a transaction of its own under the tenant's lock (so no
migrate, down or drop of that tenant runs meanwhile; the other tenants keep working):
``citus_schema_distribute`` moves its tables to a worker, then the copy left behind on
the coordinator is truncated (Citus keeps it on disk otherwise). Idempotent: a tenant
already distributed is skipped. The first tenant Citus refuses stops the run, with
Citus's reason (a foreign key to a public table that is not a reference table is the
usual one); the tenants before it stay distributed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg
from sqlalchemy.engine import Connection

from .. import citus
from ..config import Config
from ..database import rollback_quietly, run_script
from ..errors import MtmError, UsageError
from ..identifiers import quote_literal, validate_schema_name
from ..locks import schema_lock_sql
from ..planner import tenant_rows
from ..tables import existing as _existing
from .base import session

log = logging.getLogger("mtm.citus")


@dataclass
class DistributeResult:
    """The tenants distributed by this run, and those that already were."""

    distributed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    seconds: float = 0.0


def distribute(
    config: Config,
    *,
    tenants: Sequence[str] | None = None,
    all_tenants: bool = False,
    show: Callable[[str, bool], None] | None = None,
) -> DistributeResult:
    """Make the named tenants (or every tenant) distributed schemas, one at a time;
    ``show(schema, done)`` is told of each as it is distributed or found already so."""
    if bool(tenants) == all_tenants:
        raise UsageError("choose the tenants to distribute: --tenant SCHEMA (repeatable) or --all")
    only = [validate_schema_name(t) for t in tenants] if tenants else None
    result = DistributeResult()
    started = time.perf_counter()
    with session(config, purpose="mtm distribute") as (_, conn):
        cluster = citus.cluster(conn)
        if not cluster.installed:
            raise UsageError(
                "mtm distribute needs a Citus cluster: this database has no citus extension"
            )
        for schema, _ in tenant_rows(conn, config, _existing(conn, config), only):
            if citus.is_distributed(conn, schema):
                result.already.append(schema)
            else:
                _distribute_one(conn, schema, result)
                result.distributed.append(schema)
            if show is not None:
                show(schema, schema in result.distributed)
    result.seconds = time.perf_counter() - started
    return result


def _distribute_one(conn: Connection, schema: str, result: DistributeResult) -> None:
    """One tenant's transaction: its lock, ``citus_schema_distribute``, the coordinator's
    leftover copy truncated; Citus's refusal as one line."""
    started = time.perf_counter()
    try:
        run_script(conn, distribute_script(schema))
    except psycopg.Error as exc:
        rollback_quietly(conn)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        done = f"; {len(result.distributed)} distributed before it" if result.distributed else ""
        hint = (
            "; make the public tables it references reference tables first, then run "
            "mtm distribute again"
            if "reference tables" in reason
            else ""
        )
        raise MtmError(
            f"tenant {schema!r} was not distributed: {reason} (nothing changed for it{done}){hint}"
        ) from None
    duration_ms = round(1000 * (time.perf_counter() - started), 3)
    log.info(
        "distributed tenant %s",
        schema,
        extra={"event": "tenant.distribute", "schema": schema, "duration_ms": duration_ms},
    )


def distribute_script(schema: str) -> list[str]:
    """The transaction that makes one tenant's schema distributed."""
    return [
        "BEGIN",
        schema_lock_sql(schema),
        "SET LOCAL client_min_messages TO warning",
        citus.distribute_sql(schema),
        "SELECT count(truncate_local_data_after_distributing_table(c.oid::regclass)) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = {quote_literal(schema)} AND c.relkind IN ('r', 'p') "
        "AND NOT c.relispartition",
        "COMMIT",
    ]
