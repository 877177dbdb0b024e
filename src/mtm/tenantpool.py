"""A tenant-affine connection pool: SQLAlchemy's ``QueuePool`` (and its asyncio form) that
knows which tenant each idle connection is bound to.

Why: a block bound to a tenant would otherwise cost a round trip more than a plain
request (the bind), and an affine block one more whenever the pool hands it a
connection bound to another tenant. This pool

* prefers, for a tenant block, an idle connection already bound to that tenant (affine
  blocks), else one bound to no tenant, else what the queue would have given (FIFO, or
  LIFO with ``pool_use_lifo=True``);
* does the bind during its checkout, in the round trip the pre-ping would have cost
  anyway: the bind (or the reset and the bind, on a connection left bound to another
  tenant) IS the ping; a statement that fails because the connection is gone makes the
  pool replace the connection, as a failed ping does;
* resets a connection still bound to a tenant before any other checkout (again as its
  ping).

``create_app_engine`` / ``create_async_app_engine`` use it unless given a ``poolclass``.
The blocks (``mtm.session``) check the mark themselves and bind when it is missing, so
they hold on any pool; this one only saves round trips.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool
from sqlalchemy.util import memoized_property
from sqlalchemy.util import queue as sqla_queue

from .binding import (
    BOUND,
    PING_SQL,
    RESET_SQL,
    WANT,
    Want,
    autocommit_execute,
    bound_to,
    forget_prepare_counts,
    literal_bind_sql,
    mark,
    rebind_sql,
)

_FRESH = "mtm.fresh"


def _preferred(records: collections.deque[Any], want: Want | None, lifo: bool) -> int | None:
    """The index of the idle record to hand out: one bound to the wanted tenant (affine
    blocks only), else one bound to nobody; None to take the queue's usual one."""
    order = range(len(records) - 1, -1, -1) if lifo else range(len(records))
    key = None if want is None or not want.affine else (want.schema, want.role)
    unbound = None
    for i in order:
        record = records[i]
        bound = bound_to(record.dbapi_connection, record.info)
        if key is not None and bound == key:
            return i
        if bound is None and unbound is None:
            unbound = i
            if key is None:
                break
    return unbound


def _take(records: collections.deque[Any], lifo: bool) -> Any:
    i = _preferred(records, WANT.get(), lifo)
    if i is None:
        return records.pop() if lifo else records.popleft()
    record = records[i]
    del records[i]
    return record


class TenantQueue(sqla_queue.Queue[Any]):
    """The pool's queue of idle connections, taking the one the tenant block prefers."""

    def _get(self) -> Any:  # called under the queue's mutex
        return _take(self.queue, self.use_lifo)


class _TenantAsyncioQueue(asyncio.Queue[Any]):
    use_lifo = False

    def _get(self) -> Any:  # called by get_nowait, in the context of the task that gets
        return _take(self._queue, self.use_lifo)  # type: ignore[attr-defined]


class AsyncTenantQueue(sqla_queue.AsyncAdaptedQueue[Any]):
    """The asyncio form of ``TenantQueue``."""

    @memoized_property
    def _queue(self) -> asyncio.Queue[Any]:
        queue = _TenantAsyncioQueue(maxsize=self.maxsize)
        queue.use_lifo = self.use_lifo
        return queue


class _PingFlag:
    """The pool's pre-ping, done by the checkout listener (where the bind can go with it)
    instead of by SQLAlchemy (which would send a ping of its own first)."""

    def __init__(
        self, creator: Any, *, pre_ping: bool = False, _dispatch: Any = None, **kw: Any
    ) -> None:
        super().__init__(creator, pre_ping=False, _dispatch=_dispatch, **kw)  # type: ignore[call-arg]
        self.ping = pre_ping
        # recreate() (dispose) hands its listeners over in _dispatch, these among them.
        # Not event.contains(): SQLAlchemy keys listeners by the id() of the pool they
        # were first added to, so a new pool where a disposed one lived would seem to
        # have them, and a recreated one would not.
        if _dispatch is None:
            event.listen(self, "connect", _on_connect)
            event.listen(self, "checkout", _on_checkout)

    def recreate(self) -> Any:
        pool = super().recreate()  # type: ignore[misc]
        pool.ping = self.ping
        return pool


class TenantPool(_PingFlag, QueuePool):
    """``QueuePool`` that prefers a connection bound to the requested tenant and binds
    during its checkout (see the module's docstring)."""

    _queue_class = TenantQueue


class AsyncTenantPool(_PingFlag, AsyncAdaptedQueuePool):
    """The asyncio form of ``TenantPool``."""

    _queue_class = AsyncTenantQueue


def _on_connect(dbapi: Any, record: Any) -> None:
    record.info.pop(BOUND, None)
    record.info[_FRESH] = id(dbapi)


def _checkout_sql(
    want: Want | None, bound: tuple[str, str | None] | None, ping: bool
) -> tuple[str | None, dict[str, str] | None]:
    """The one statement this checkout sends (None: nothing to send). A connection that
    may carry a tenant's state is marked bound (``binding.BOUND``): every bind marks it,
    only a completed reset removes the mark, and a failed reset drops the connection."""
    if want is None:
        return (RESET_SQL if bound is not None else PING_SQL if ping else None), None
    if want.affine and bound == (want.schema, want.role):
        return (PING_SQL if ping else None), None
    if bound is None:
        return literal_bind_sql(want.schema, want.role), None
    return rebind_sql(want.schema, want.role), None


def _on_checkout(dbapi: Any, record: Any, proxy: Any) -> None:
    """Bind, re-bind, reset or ping, whichever this checkout needs, in one round trip.
    A connection that breaks doing it is replaced (``DisconnectionError``); one whose
    reset failed half-way too. A bind refused on a fresh session (a role that does not
    exist) leaves it unbound: the block binds again and raises the error itself."""
    want = WANT.get()
    fresh = record.info.pop(_FRESH, None) == id(dbapi)
    bound = bound_to(dbapi, record.info)
    sql, params = _checkout_sql(want, bound, getattr(proxy._pool, "ping", False) and not fresh)
    if sql is None:
        return
    record.info.pop(BOUND, None)
    try:
        autocommit_execute(dbapi, sql, params)
    except Exception as error:
        driver = record.driver_connection
        # A server that ends the session (57P01...) says so before the socket closes:
        # psycopg may not call the connection broken yet.
        state = str(getattr(error, "sqlstate", "") or "")
        ended = state.startswith("08") or state in ("57P01", "57P02", "57P03")
        if bound is not None or ended or driver is None or driver.closed or driver.broken:
            raise exc.DisconnectionError("the connection failed its checkout") from error
        return
    if sql.startswith(RESET_SQL):  # a reset was part of it
        forget_prepare_counts(record.driver_connection)
    if want is not None:
        mark(dbapi, record.info, want.schema, want.role)
