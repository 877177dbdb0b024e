"""The SQL that binds a pooled connection to a tenant and resets it, and the mark a bound
connection carries in its pool record.

Shared by ``session`` (the blocks) and ``tenantpool`` (the pool that binds during its
checkout and prefers connections already bound to the requested tenant). Every piece
of work here is one round trip.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, NamedTuple

import psycopg
import sqlalchemy as sa
from psycopg import sql as psql

from .identifiers import quote_ident, validate_schema_name

_BIND_SQL = "SELECT set_config('search_path', %(path)s, false)"
_BIND_ROLE_SQL = (
    "SELECT set_config('search_path', %(path)s, false), set_config('role', %(role)s, false)"
)
# DISCARD ALL, statement by statement: DISCARD ALL itself refuses to run in the implicit
# transaction of a multi-statement query, and this way the reset stays one round trip.
# RESET ALL restores every setting to its server, database, role or connection-string
# default. DEALLOCATE ALL also makes psycopg (>= 3.3.6) forget the statements it prepared.
RESET_SQL = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
)
PING_SQL = "SELECT 1"

# A connection that may carry a tenant's session state has (id of its DBAPI connection,
# schema, role) in its pool record's info under this key: bound by a block, or by the
# tenant pool's checkout for one. No mark: a fresh or reset session.
BOUND = "mtm.bound_tenant"


class Want(NamedTuple):
    """What the block checking a connection out needs: its tenant, role and affinity."""

    schema: str
    role: str | None
    affine: bool


# Set by a tenant block around its checkout; None for every other checkout.
WANT: contextvars.ContextVar[Want | None] = contextvars.ContextVar("mtm_want", default=None)


def search_path_for(schema: str) -> str:
    """The ``search_path`` value of a tenant: its schema, then public, then ``pg_temp``
    (last, so that a temporary table never shadows a table of the tenant)."""
    return f"{quote_ident(validate_schema_name(schema))}, public, pg_temp"


def bind_params(schema: str, role: str | None) -> tuple[str, dict[str, str]]:
    """The bind as one statement with bound parameters."""
    params = {"path": search_path_for(schema)}
    if role is None:
        return _BIND_SQL, params
    params["role"] = role
    return _BIND_ROLE_SQL, params


@functools.lru_cache(maxsize=4096)
def literal_bind_sql(schema: str, role: str | None) -> str:
    """The bind with its values quoted as literals (made once per tenant and role): no
    parameters for the driver to adapt on every request."""
    settings = [psql.SQL("set_config('search_path', {}, false)").format(search_path_for(schema))]
    if role is not None:
        settings.append(psql.SQL("set_config('role', {}, false)").format(role))
    return psql.SQL("SELECT {}").format(psql.SQL(", ").join(settings)).as_string(None)


@functools.lru_cache(maxsize=4096)
def rebind_sql(schema: str, role: str | None) -> str:
    """The reset of the previous tenant and the binding of the next, as one simple
    (multi-statement) query: one round trip."""
    return f"{RESET_SQL}; {literal_bind_sql(schema, role)}"


def bound_to(dbapi: Any, info: dict[Any, Any]) -> tuple[str, str | None] | None:
    """The (schema, role) a connection is marked bound to, None when it is not (a mark
    left from an earlier DBAPI connection of the same record does not count)."""
    bound = info.get(BOUND)
    if bound is None or bound[0] != id(dbapi):
        return None
    return bound[1], bound[2]


def mark(dbapi: Any, info: dict[Any, Any], schema: str, role: str | None) -> None:
    info[BOUND] = (id(dbapi), schema, role)


def forget_prepare_counts(driver: Any) -> None:
    """After a reset: clear psycopg's count of executions per query, as the reset
    cleared the statements it prepared.

    Why: psycopg prepares a query at its fifth execution, and it clears the counts on
    ``DEALLOCATE ALL`` only when it had prepared something. A query run once per block
    would otherwise be prepared every fifth block (a round trip of its own) for the next
    reset to drop, and psycopg would then send a ``DEALLOCATE ALL`` of its own (another
    round trip). This is psycopg's private state: if its shape changes, nothing happens.
    """
    counts = getattr(getattr(driver, "_prepared", None), "_counts", None)
    if isinstance(counts, dict):
        counts.clear()


def autocommit_execute(dbapi: Any, sql: str, params: dict[str, str] | None = None) -> None:
    """Run one statement outside any transaction on a DBAPI connection (psycopg, or
    SQLAlchemy's asyncio adapter of it, which offers the same sync interface)."""
    try:
        was = dbapi.autocommit
        dbapi.autocommit = True
    except Exception:  # in a transaction the driver knows of and SQLAlchemy does not
        dbapi.rollback()
        was = dbapi.autocommit
        dbapi.autocommit = True
    try:
        cursor = dbapi.cursor()
        try:
            cursor.execute(sql, params)
        finally:
            cursor.close()
    except psycopg.Error as exc:  # raised as SQLAlchemy raises driver errors
        raise sa.exc.DBAPIError.instance(sql, params, exc, psycopg.Error) from exc
    finally:
        dbapi.autocommit = was
