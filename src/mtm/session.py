"""Connections and ORM sessions bound to a tenant's schema, for applications.

``tenant_connection(engine, "acme")`` gives a SQLAlchemy ``Connection`` whose
``search_path`` is ``"acme", public, pg_temp`` (and, with ``role=True``, whose current role is
the tenant's role); ``tenant_session`` gives an ORM ``Session`` on such a connection;
``async_tenant_connection`` and ``async_tenant_session`` are the asyncio forms.

How the binding is made, and why:

* The settings are made at session level (``set_config(..., false)``) in one round trip,
  sent in autocommit mode, before the block starts. So they hold for the whole block,
  across the block's own commits and rollbacks. (``SET LOCAL`` would vanish at the first
  ``commit()`` inside the block, and the statements after it would silently run against
  ``public``; a plain ``SET`` inside a transaction would vanish at a rollback.)
* When the block ends, however it ends (normally, after a commit, or with an exception
  in the middle of a transaction), any open transaction is rolled back and the session
  is reset to what a fresh connection would be (``DISCARD ALL``, sent as its parts in
  one round trip: temp tables and other temp objects, settings, role, prepared
  statements, ``WITH HOLD`` cursors, ``LISTEN``, session advisory locks, sequence state;
  the rollback in the same round trip) before the connection goes back to the pool.
  If that reset cannot be done, the connection is invalidated (closed and dropped
  from the pool) rather than returned: the next user of a pooled connection never
  inherits anything from a tenant.
* ``affine=True`` skips the reset between blocks of the same tenant; see
  ``tenant_connection`` and docs/applications.md ("Tenant affinity").
* During the block ``pg_temp`` comes last in ``search_path`` (``"acme", public,
  pg_temp``), so a temporary table can never shadow one of the tenant's tables.
* Schema names are validated (``validate_schema_name``) and quoted; the values travel
  as bound parameters.

``SET ROLE`` is a safety net against mistakes, not a security boundary, whenever the
login role may become more than the tenant's role: from a superuser or owner pool code
could ``RESET ROLE``, and a login role that is a member of every tenant role (the shared
``tenant_role_member``) can ``SET ROLE`` into any of them. The boundary is a login per
tenant (``mtm create --role --login``; see docs/applications.md).
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import sqlalchemy as sa
from psycopg import sql as psql
from psycopg.pq import TransactionStatus
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from .config import Config, sqlalchemy_url
from .identifiers import (
    DEFAULT_ROLE_PREFIX,
    quote_ident,
    tenant_role_name,
    validate_schema_name,
)
from .registry import Tenant

if TYPE_CHECKING:  # the asyncio extension needs greenlet, which only async users install
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

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


def search_path_for(schema: str) -> str:
    """The ``search_path`` value of a tenant: its schema, then public, then ``pg_temp``
    (last, so that a temporary table never shadows a table of the tenant)."""
    return f"{quote_ident(validate_schema_name(schema))}, public, pg_temp"


def _schema_of(tenant: str | Tenant) -> str:
    return validate_schema_name(tenant.schema if isinstance(tenant, Tenant) else tenant)


def _role_of(schema: str, role: bool | str) -> str | None:
    if role is True:
        return tenant_role_name(schema, DEFAULT_ROLE_PREFIX)
    if role is False or role is None:
        return None
    if not isinstance(role, str) or not role or "\x00" in role:
        raise ValueError(f"role must be True, False or a role name, got {role!r}")
    return role


def _bind_params(schema: str, role: str | None) -> tuple[str, dict[str, str]]:
    params = {"path": search_path_for(schema)}
    if role is None:
        return _BIND_SQL, params
    params["role"] = role
    return _BIND_ROLE_SQL, params


def _autocommit_execute(dbapi: Any, sql: str, params: dict[str, str] | None = None) -> None:
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


def _bind(conn: Connection, schema: str, role: str | None) -> None:
    sql, params = _bind_params(schema, role)
    _autocommit_execute(conn.connection.dbapi_connection, sql, params)


# Tenant affinity: a connection left bound to a tenant carries (schema, role) in its pool
# record's info under this key, with the id of the DBAPI connection it was made on.
_BOUND = "mtm.bound_tenant"
# Set while an affine block checks a connection out: the checkout listener then leaves a
# bound connection as it is (the block itself re-binds it); every other checkout resets it.
_AFFINE_CHECKOUT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "mtm_affine_checkout", default=False
)
_LISTEN_LOCK = threading.Lock()


def _bound_to(dbapi: Any, info: dict[Any, Any]) -> tuple[str, str | None] | None:
    bound = info.get(_BOUND)
    if bound is None or bound[0] != id(dbapi):
        return None
    return bound[1], bound[2]


def _reset_on_plain_checkout(dbapi: Any, record: Any, proxy: Any) -> None:
    """Pool checkout listener: a connection still bound to a tenant is reset before any
    checkout that is not an affine tenant block (``engine.connect()``, ``engine.begin()``,
    a non-affine ``tenant_connection``), so tenant state never leaks out of affine use."""
    if _BOUND not in record.info or _AFFINE_CHECKOUT.get():
        return
    try:
        _autocommit_execute(dbapi, RESET_SQL)
    except Exception as exc:
        raise sa.exc.DisconnectionError("could not reset a tenant-bound connection") from exc
    del record.info[_BOUND]


_AFFINE_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()


def _install_affinity(engine: Engine) -> None:
    pool = engine.pool
    if pool in _AFFINE_POOLS:
        return
    with _LISTEN_LOCK:
        if not event.contains(pool, "checkout", _reset_on_plain_checkout):
            event.listen(pool, "checkout", _reset_on_plain_checkout)
        _AFFINE_POOLS.add(pool)


def _rebind_sql(dbapi: Any, schema: str, role: str | None) -> str:
    """The reset of the previous tenant and the binding of the next, as one simple
    (multi-statement) query: one round trip. Values are quoted as literals."""
    settings = [psql.SQL("set_config('search_path', {}, false)").format(search_path_for(schema))]
    if role is not None:
        settings.append(psql.SQL("set_config('role', {}, false)").format(role))
    query = psql.SQL("{}; SELECT {}").format(psql.SQL(RESET_SQL), psql.SQL(", ").join(settings))
    return query.as_string(None)


def _affine_ready(conn: Connection | None, schema: str, role: str | None) -> bool:
    """Whether a checked-out connection is already bound to this tenant (and role)."""
    if conn is None:
        return False
    record = conn.connection
    return _bound_to(record.dbapi_connection, record.info) == (schema, role)


def _affine_bind(conn: Connection, schema: str, role: str | None) -> None:
    """Bind an affine block's connection: nothing to send when it is already bound to
    this tenant (and role), one round trip otherwise (reset + bind when it was bound to
    another tenant)."""
    record = conn.connection
    dbapi = record.dbapi_connection
    bound = _bound_to(dbapi, record.info)
    if bound == (schema, role):
        return
    record.info.pop(_BOUND, None)
    try:
        if bound is None:  # a fresh or reset connection
            sql, params = _bind_params(schema, role)
            _autocommit_execute(dbapi, sql, params)
        else:
            _autocommit_execute(dbapi, _rebind_sql(dbapi, schema, role))
    except Exception:
        conn.invalidate()
        raise
    record.info[_BOUND] = (id(dbapi), schema, role)


def _unbind(conn: Connection) -> None:
    """Roll back and reset the session to a fresh one; on any failure invalidate the
    connection. With a transaction open on the server the rollback and the reset go as
    one query: one round trip."""
    try:
        record = conn.connection
        status = record.driver_connection.info.transaction_status  # type: ignore[union-attr]
        if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            cursor = record.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute("ROLLBACK; " + RESET_SQL)
            finally:
                cursor.close()
            if conn.in_transaction():
                conn.rollback()  # SQLAlchemy's side; the driver is idle, nothing is sent
        else:
            if conn.in_transaction():
                conn.rollback()
            _autocommit_execute(record.dbapi_connection, RESET_SQL)
    except Exception:
        conn.invalidate()


@contextmanager
def bind_connection(
    conn: Connection, tenant: str | Tenant, *, role: bool | str = False
) -> Iterator[Connection]:
    """Bind an already checked-out connection (not in a transaction) to a tenant for the
    length of the block; reset it afterwards."""
    schema = _schema_of(tenant)
    role_name = _role_of(schema, role)
    if conn.in_transaction():
        raise RuntimeError("bind the connection to a tenant before beginning a transaction")
    try:
        _bind(conn, schema, role_name)
        yield conn
    finally:
        _unbind(conn)


@contextmanager
def tenant_connection(
    engine: Engine, tenant: str | Tenant, *, role: bool | str = False, affine: bool = False
) -> Iterator[Connection]:
    """A connection whose search_path is the tenant's schema, then public.

    ``tenant`` is a schema name or a ``Tenant``. ``role=True`` also switches to the
    tenant's role (``mtm_tenant_<schema>``, made by ``mtm create --role``); a string
    names the role (for a custom ``tenant_role_prefix``, use ``tenant_role(config,
    schema)``). Uncommitted work is rolled back at the end of the block, like
    ``engine.connect()``; the settings are reset before the connection returns to the
    pool.

    ``affine=True`` keeps the binding when the block ends (only the transaction is rolled
    back): the next affine block of the same tenant on that connection sends nothing
    before its own statements, one of another tenant resets and re-binds in one round
    trip, and any other checkout of the connection resets it first. Session state (temp
    tables, settings, prepared statements, LISTEN, advisory locks) then persists between
    blocks of the SAME tenant, never across tenants (docs/applications.md).
    """
    if not affine:
        with engine.connect() as conn, bind_connection(conn, tenant, role=role) as bound:
            yield bound
        return
    schema = _schema_of(tenant)
    role_name = _role_of(schema, role)
    _install_affinity(engine)
    token = _AFFINE_CHECKOUT.set(True)
    try:
        conn = engine.connect()
    finally:
        _AFFINE_CHECKOUT.reset(token)
    with conn:  # closing rolls back; a failed rollback invalidates the connection
        _affine_bind(conn, schema, role_name)
        yield conn


@contextmanager
def tenant_session(
    engine: Engine,
    tenant: str | Tenant,
    *,
    role: bool | str = False,
    affine: bool = False,
    **session_options: Any,
) -> Iterator[Session]:
    """An ORM ``Session`` on a ``tenant_connection``; ``session.commit()`` commits.

    Work not committed when the block ends is rolled back. ``session_options`` go to
    ``Session`` (``expire_on_commit=False`` ...).
    """
    with tenant_connection(engine, tenant, role=role, affine=affine) as conn:
        with Session(bind=conn, **session_options) as session:
            yield session


async def _abind(conn: AsyncConnection, schema: str, role: str | None) -> None:
    sql, params = _bind_params(schema, role)
    await conn.run_sync(
        lambda sync: _autocommit_execute(sync.connection.dbapi_connection, sql, params)
    )


async def _aunbind(conn: AsyncConnection) -> None:
    try:
        await conn.run_sync(_unbind)
    except Exception:
        await conn.invalidate()


@asynccontextmanager
async def async_tenant_connection(
    engine: AsyncEngine, tenant: str | Tenant, *, role: bool | str = False, affine: bool = False
) -> AsyncIterator[AsyncConnection]:
    """The asyncio form of ``tenant_connection``, on an ``AsyncEngine``
    (``create_async_engine("postgresql+psycopg://...")``); ``affine`` as there."""
    schema = _schema_of(tenant)
    role_name = _role_of(schema, role)
    if affine:
        _install_affinity(engine.sync_engine)
        token = _AFFINE_CHECKOUT.set(True)
        aconn = engine.connect()
        try:
            await aconn.start()
        finally:
            _AFFINE_CHECKOUT.reset(token)
        try:  # closing rolls back; a failed rollback invalidates the connection
            if not _affine_ready(aconn.sync_connection, schema, role_name):  # no I/O
                await aconn.run_sync(lambda sync: _affine_bind(sync, schema, role_name))
            yield aconn
        finally:
            await aconn.close()
        return
    async with engine.connect() as conn:
        try:
            await _abind(conn, schema, role_name)
            yield conn
        finally:
            await _aunbind(conn)


@asynccontextmanager
async def async_tenant_session(
    engine: AsyncEngine,
    tenant: str | Tenant,
    *,
    role: bool | str = False,
    affine: bool = False,
    **session_options: Any,
) -> AsyncIterator[AsyncSession]:
    """The asyncio form of ``tenant_session``: an ``AsyncSession`` bound to the tenant."""
    from sqlalchemy.ext.asyncio import AsyncSession

    async with async_tenant_connection(engine, tenant, role=role, affine=affine) as conn:
        async with AsyncSession(bind=conn, **session_options) as session:
            yield session


def tenant_role(config: Config, tenant: str | Tenant) -> str:
    """The role ``mtm create --role`` made for a tenant under ``config``'s prefix."""
    return tenant_role_name(_schema_of(tenant), config.tenant_role_prefix)


def app_url(url_or_config: str | Config) -> sa.URL:
    """A database URL (``postgres://``, ``postgresql://``, Unix-socket forms too) or a
    Config, as a SQLAlchemy URL for psycopg 3."""
    if isinstance(url_or_config, Config):
        from .database import resolve_url

        return sqlalchemy_url(resolve_url(url_or_config))
    return sqlalchemy_url(url_or_config)


def create_app_engine(url_or_config: str | Config, **kwargs: Any) -> Engine:
    """``sqlalchemy.create_engine`` for an application, with mtm's URL handling."""
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(app_url(url_or_config), **kwargs)


def create_async_app_engine(url_or_config: str | Config, **kwargs: Any) -> AsyncEngine:
    """``create_async_engine`` (psycopg 3 in asyncio mode) with mtm's URL handling."""
    from sqlalchemy.ext.asyncio import create_async_engine

    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(app_url(url_or_config), **kwargs)
