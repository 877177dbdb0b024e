"""Connections and ORM sessions bound to a tenant's schema, for applications.

``tenant_connection(engine, "acme")`` gives a SQLAlchemy ``Connection`` whose
``search_path`` is ``"acme", public, pg_temp`` (and, with ``role=True``, whose current role is
the tenant's role); ``tenant_session`` gives an ORM ``Session`` on such a connection;
``async_tenant_connection`` and ``async_tenant_session`` are the asyncio forms.

How the binding is made, and why:

* The settings are made at session level (``set_config(..., false)``) in one round trip,
  sent in autocommit mode, before the block starts: by the checkout of mtm's tenant
  pool (``create_app_engine``; the bind is its pre-ping), else by the block. So they
  hold for the whole block,
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
* ``affine=True`` skips the reset between blocks of the same tenant, and the tenant
  pool hands such a block an idle connection already bound to its tenant when it has
  one; see ``tenant_connection`` and docs/applications.md ("Tenant affinity").
* During the block ``pg_temp`` comes last in ``search_path`` (``"acme", public,
  pg_temp``), so a temporary table can never shadow one of the tenant's tables.
* Schema names are validated (``validate_schema_name``) and quoted; the values travel
  as bound parameters, or as literals quoted by psycopg (``binding.literal_bind_sql``).

``SET ROLE`` is a safety net against mistakes, not a security boundary, whenever the
login role may become more than the tenant's role: from a superuser or owner pool code
could ``RESET ROLE``, and a login role that is a member of every tenant role (the shared
``tenant_role_member``) can ``SET ROLE`` into any of them. The boundary is a login per
tenant (``mtm create --role --login``; see docs/applications.md).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from psycopg.pq import TransactionStatus
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from .binding import (
    BOUND,
    RESET_SQL,
    WANT,
    Want,
    bind_params,
    bound_to,
    forget_prepare_counts,
    mark,
    rebind_sql,
)
from .binding import autocommit_execute as _autocommit_execute
from .binding import search_path_for as search_path_for  # part of this module's API
from .config import Config, sqlalchemy_url
from .identifiers import DEFAULT_ROLE_PREFIX, tenant_role_name, validate_schema_name
from .registry import Tenant
from .tenantpool import AsyncTenantPool, TenantPool

if TYPE_CHECKING:  # the asyncio extension needs greenlet, which only async users install
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession


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


def _bind(conn: Connection, schema: str, role: str | None) -> None:
    sql, params = bind_params(schema, role)
    _autocommit_execute(conn.connection.dbapi_connection, sql, params)


_LISTEN_LOCK = threading.Lock()


def _reset_on_plain_checkout(dbapi: Any, record: Any, proxy: Any) -> None:
    """Checkout listener of pools other than mtm's ``TenantPool``: a connection still
    bound to a tenant is reset before any checkout that is not an affine tenant block
    (``engine.connect()``, ``engine.begin()``, a non-affine ``tenant_connection``), so
    tenant state never leaks out of affine use."""
    want = WANT.get()
    if BOUND not in record.info or (want is not None and want.affine):
        return
    try:
        _autocommit_execute(dbapi, RESET_SQL)
    except Exception as exc:
        raise sa.exc.DisconnectionError("could not reset a tenant-bound connection") from exc
    forget_prepare_counts(record.driver_connection)
    del record.info[BOUND]


_AFFINE_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()


def _install_affinity(engine: Engine) -> None:
    pool = engine.pool
    if pool in _AFFINE_POOLS or isinstance(pool, (TenantPool, AsyncTenantPool)):
        return
    with _LISTEN_LOCK:
        # The pool's own listeners (recreate() carries them), not event.contains():
        # SQLAlchemy keys listeners by the id() of the pool they were first added to, so
        # a new pool where a disposed one lived would seem to have it already.
        if _reset_on_plain_checkout not in pool.dispatch.checkout:
            event.listen(pool, "checkout", _reset_on_plain_checkout)
        _AFFINE_POOLS.add(pool)


def _checkout(engine: Engine, want: Want) -> Connection:
    """``engine.connect()`` telling the pool which tenant the block wants."""
    token = WANT.set(want)
    try:
        return engine.connect()
    finally:
        WANT.reset(token)


def _ready(conn: Connection | None, schema: str, role: str | None) -> bool:
    """Whether a checked-out connection is already bound to this tenant (and role)."""
    if conn is None:
        return False
    record = conn.connection
    return bound_to(record.dbapi_connection, record.info) == (schema, role)


def _ensure_bound(conn: Connection, schema: str, role: str | None) -> None:
    """Bind a block's connection: nothing to send when it is already bound to this
    tenant (and role): the tenant pool's checkout did it, or an affine block left it so;
    one round trip otherwise (reset + bind when it was bound to another tenant)."""
    record = conn.connection
    dbapi = record.dbapi_connection
    bound = bound_to(dbapi, record.info)
    if bound == (schema, role):
        return
    record.info.pop(BOUND, None)
    try:
        if bound is None:  # a fresh or reset connection
            sql, params = bind_params(schema, role)
            _autocommit_execute(dbapi, sql, params)
        else:
            _autocommit_execute(dbapi, rebind_sql(schema, role))
            forget_prepare_counts(record.driver_connection)
    except Exception:
        if bound is not None:  # the reset may have been done in part: drop the session
            conn.invalidate()
        raise  # a refused bind alone changed nothing (one statement)
    mark(dbapi, record.info, schema, role)


def _unbind(conn: Connection, closing: bool = False) -> None:
    """Roll back and reset the session to a fresh one; on any failure invalidate the
    connection. With a transaction open on the server the rollback and the reset go as
    one query: one round trip. ``closing``: the connection is closed right after, and
    its close rolls SQLAlchemy's side back (sending nothing: the driver is idle)."""
    try:
        record = conn.connection
        status = record.driver_connection.info.transaction_status  # type: ignore[union-attr]
        if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            cursor = record.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute("ROLLBACK; " + RESET_SQL)
            finally:
                cursor.close()
            if conn.in_transaction() and not closing:
                conn.rollback()  # SQLAlchemy's side; the driver is idle, nothing is sent
        else:
            if conn.in_transaction() and not closing:
                conn.rollback()
            _autocommit_execute(record.dbapi_connection, RESET_SQL)
        forget_prepare_counts(record.driver_connection)
        record.info.pop(BOUND, None)
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
    trip, and any other checkout of the connection resets it first. On an engine of
    ``create_app_engine`` the pool hands an affine block an idle connection already bound
    to its tenant when it has one. Session state (temp tables, settings, prepared
    statements, LISTEN, advisory locks) then persists between blocks of the SAME tenant,
    never across tenants (docs/applications.md).
    """
    schema = _schema_of(tenant)
    role_name = _role_of(schema, role)
    if affine:
        _install_affinity(engine)
    conn = _checkout(engine, Want(schema, role_name, affine))
    with conn:  # closing rolls back; a failed rollback invalidates the connection
        _ensure_bound(conn, schema, role_name)
        if affine:
            yield conn
            return
        try:
            yield conn
        finally:
            _unbind(conn, closing=True)


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


async def _aunbind(conn: AsyncConnection) -> None:
    try:
        await conn.run_sync(_unbind, True)
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
    token = WANT.set(Want(schema, role_name, affine))
    aconn = engine.connect()
    try:
        await aconn.start()
    finally:
        WANT.reset(token)
    try:  # closing rolls back; a failed rollback invalidates the connection
        if not _ready(aconn.sync_connection, schema, role_name):  # no I/O
            await aconn.run_sync(lambda sync: _ensure_bound(sync, schema, role_name))
        if affine:
            yield aconn
        else:
            try:
                yield aconn
            finally:
                await _aunbind(aconn)
    finally:
        await aconn.close()


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
    kwargs.setdefault("poolclass", TenantPool)
    return sa.create_engine(app_url(url_or_config), **kwargs)


def create_async_app_engine(url_or_config: str | Config, **kwargs: Any) -> AsyncEngine:
    """``create_async_engine`` (psycopg 3 in asyncio mode) with mtm's URL handling."""
    from sqlalchemy.ext.asyncio import create_async_engine

    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("poolclass", AsyncTenantPool)
    return create_async_engine(app_url(url_or_config), **kwargs)
