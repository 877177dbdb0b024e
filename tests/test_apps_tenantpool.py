"""The tenant-affine pool of ``create_app_engine`` / ``create_async_app_engine``.

It must save round trips (the bind goes in the pre-ping's round trip; an affine block
gets a connection already bound to its tenant when one is idle) and never let state
cross tenants: not with many tenants and threads or asyncio tasks on a small pool, not
after a failed transaction, a refused bind, or a connection killed by the server.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import mtm
from conftest import _libpq, make_project
from mtm.tenantpool import AsyncTenantPool, TenantPool

TENANTS = 10


@dataclass(frozen=True)
class Fleet:
    url: str
    admin: str  # libpq URL of the database
    tenants: list[str]


@pytest.fixture(scope="module")
def fleet(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One database, TENANTS tenants, each with a ``customers`` table of one row naming it."""
    url = module_database_url
    project = make_project(tmp_path_factory.mktemp("pool") / "app", url)
    project.write(
        "tenant", "0001_customers.sql", "CREATE TABLE customers (id serial PRIMARY KEY, name text);"
    )
    tenants = [f"t{n}" for n in range(TENANTS)]
    for schema in tenants:
        mtm.create(project.config, schema)
        project.query(f"INSERT INTO {schema}.customers (name) VALUES ('{schema} customer')")
    yield Fleet(url, _libpq(url), tenants)


def _pid(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def _seen(conn: sa.Connection) -> tuple[Any, ...]:
    """What of a tenant's session state a block sees: search_path, a custom setting,
    temp tables, LISTEN, advisory locks, prepared statements, and the customers."""
    row = conn.execute(
        sa.text(
            "SELECT current_setting('search_path'),"
            " coalesce(current_setting('app.tenant', true), ''),"
            " (SELECT array_agg(relname ORDER BY relname) FROM pg_class"
            "  WHERE relnamespace = pg_my_temp_schema()),"
            " (SELECT array_agg(c ORDER BY c) FROM pg_listening_channels() c),"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            "  AND pid = pg_backend_pid()),"
            " (SELECT array_agg(name ORDER BY name) FROM pg_prepared_statements WHERE from_sql)"
        )
    ).one()
    names = list(conn.execute(sa.text("SELECT name FROM customers")).scalars())
    conn.rollback()
    return (*row, names)


def _fresh(schema: str) -> tuple[Any, ...]:
    return (f'"{schema}", public, pg_temp', "", None, None, 0, None, [f"{schema} customer"])


def _leave_state(conn: sa.Connection, schema: str) -> None:
    """Session state of every kind the blocks below look for, committed."""
    for sql in (
        "CREATE TEMP TABLE owner AS SELECT current_schema() AS name",
        f"SET app.tenant = '{schema}'",
        f"LISTEN {schema}",
        "SELECT pg_advisory_lock(pg_backend_pid())",  # never waits for another session
        f"PREPARE {schema}_q AS SELECT 1",
    ):
        conn.execute(sa.text(sql))
    conn.commit()


def _held(engine: sa.Engine, schemas: list[str]) -> dict[str, int]:
    """Bind one connection per schema at once (affine), leave state, return the pids."""
    pids = {}
    with ExitStack() as stack:
        for schema in schemas:
            conn = stack.enter_context(mtm.tenant_connection(engine, schema, affine=True))
            _leave_state(conn, schema)
            pids[schema] = _pid(conn)
    return pids


def test_app_engines_use_the_tenant_pool(fleet: Fleet) -> None:
    engine = mtm.create_app_engine(fleet.url)
    assert isinstance(engine.pool, TenantPool)
    engine.dispose()
    assert isinstance(engine.pool, TenantPool) and engine.pool.ping  # recreated alike
    aengine = mtm.create_async_app_engine(fleet.url)
    assert isinstance(aengine.sync_engine.pool, AsyncTenantPool)
    asyncio.run(aengine.dispose())


@pytest.mark.parametrize("lifo", [False, True], ids=["fifo", "lifo"])
def test_an_affine_block_gets_the_connection_bound_to_its_tenant(fleet: Fleet, lifo: bool) -> None:
    """Three idle connections bound to t0, t1, t2: whatever the queue's order, an affine
    block of each tenant gets its own, with its state; a non-affine block of t1 does not
    get t1's state; another tenant gets a reset session."""
    engine = mtm.create_app_engine(fleet.url, pool_size=3, max_overflow=0, pool_use_lifo=lifo)
    try:
        t0, t1, t2, t3 = fleet.tenants[:4]
        pids = _held(engine, [t0, t1, t2])
        for schema in (t1, t2, t0, t1):
            with mtm.tenant_connection(engine, schema, affine=True) as conn:
                seen = _seen(conn)
                assert _pid(conn) == pids[schema]
            assert seen[1:6] == (schema, ["owner"], [schema], 1, [f"{schema}_q"])
        with mtm.tenant_connection(engine, t1) as conn:
            assert _seen(conn) == _fresh(t1)
        with mtm.tenant_connection(engine, t3, affine=True) as conn:
            assert _seen(conn) == _fresh(t3)
    finally:
        engine.dispose()


def test_async_affine_block_gets_the_connection_bound_to_its_tenant(fleet: Fleet) -> None:
    t0, t1, t2 = fleet.tenants[:3]

    async def main() -> None:
        engine = mtm.create_async_app_engine(fleet.url, pool_size=3, max_overflow=0)
        try:
            pids = {}
            async with (
                mtm.async_tenant_connection(engine, t0, affine=True) as c0,
                mtm.async_tenant_connection(engine, t1, affine=True) as c1,
                mtm.async_tenant_connection(engine, t2, affine=True) as c2,
            ):
                for schema, conn in ((t0, c0), (t1, c1), (t2, c2)):
                    await conn.run_sync(_leave_state, schema)
                    pids[schema] = await conn.run_sync(_pid)
            for schema in (t2, t0, t1):
                async with mtm.async_tenant_connection(engine, schema, affine=True) as conn:
                    assert await conn.run_sync(_pid) == pids[schema]
                    assert (await conn.run_sync(_seen))[1] == schema
            async with mtm.async_tenant_connection(engine, t2) as conn:
                assert await conn.run_sync(_seen) == _fresh(t2)
        finally:
            await engine.dispose()

    asyncio.run(main())


def _frontend_queries(path: Path, start: int) -> int:
    """Round trips in a libpq trace from ``start``: simple Query and extended Sync."""
    with path.open() as f:
        f.seek(start)
        lines = f.read().splitlines()
    return sum(1 for line in lines if "\tF\t" in line and ("\tQuery\t" in line or "\tSync" in line))


def test_a_tenant_block_costs_the_round_trips_of_a_plain_request(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The claim behind the figures in docs/performance.md, counted in the protocol:
    plain, tenant, affine (same tenant) and affine (other tenant) requests of one query
    each send the same number of messages that wait for the server."""
    trace = tmp_path / "trace"
    engine = mtm.create_app_engine(fleet.url, pool_size=1, max_overflow=0)
    t0, t1 = fleet.tenants[:2]

    @sa.event.listens_for(engine, "connect")
    def _trace(dbapi: Any, record: Any) -> None:
        dbapi.pgconn.trace(os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND))

    def plain() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text(f"SELECT count(*) FROM {t0}.customers")).scalar()

    def request(schema: str, affine: bool) -> Callable[[], None]:
        def run() -> None:
            with mtm.tenant_connection(engine, schema, affine=affine) as conn:
                conn.execute(sa.text("SELECT count(*) FROM customers")).scalar()

        return run

    try:
        plain()  # the connection exists from here on
        counts = {}
        # psycopg prepares a query at its fifth execution: twelve requests of each kind
        # show that a reset never leaves it preparing (and deallocating) once more
        sides = [("plain", plain), ("tenant", request(t0, False))]
        sides += [("affine", request(t0, True)), ("affine other", request(t1, True))]
        turns = [request(t0, True), request(t1, True)]

        def alternating() -> None:  # t1, t0, t1 ... on the pool's one connection
            turns.reverse()
            turns[0]()

        sides += [("alternating", alternating)]
        sides += [("plain after affine", plain)]
        for label, fn in sides:
            for _ in range(12):
                start = trace.stat().st_size
                fn()
                counts.setdefault(label, []).append(_frontend_queries(trace, start))
    finally:
        engine.dispose()
    assert counts["plain"] == [4] * 12  # pre-ping, BEGIN, the query, ROLLBACK
    assert all(trips == [4] * 12 for trips in counts.values()), counts


def _listeners(pool: Any) -> list[int]:
    """How often the pool's own connect and checkout listeners are registered on it."""
    from mtm import tenantpool

    connect = sum(fn is tenantpool._on_connect for fn in pool.dispatch.connect)
    checkout = sum(fn is tenantpool._on_checkout for fn in pool.dispatch.checkout)
    return [connect, checkout]


@pytest.mark.parametrize("make", [mtm.create_app_engine, mtm.create_async_app_engine])
def test_every_pool_has_its_listeners_once_also_after_dispose(make: Any) -> None:
    """Each pool binds and pings through its own listeners, registered exactly once: a
    pool made where a disposed one lived (SQLAlchemy keys listeners by the id of the
    pool they were first added to) still gets them, and ``dispose()`` (which recreates
    the pool with its listeners) does not add them again, which would bind twice."""
    url = "postgresql://nobody@127.0.0.1:9/nowhere"  # pools connect on first use only
    disposed, missing = [], 0
    for _ in range(1000):
        engine = make(url)
        engine.sync_engine.dispose() if hasattr(engine, "sync_engine") else engine.dispose()
        disposed.append(engine)
        fresh = make(url)
        pool = fresh.sync_engine.pool if hasattr(fresh, "sync_engine") else fresh.pool
        missing += _listeners(pool) != [1, 1]
    assert missing == 0, f"{missing} of 1000 new pools without their listeners once each"
    engine = disposed[0]
    pool = engine.sync_engine.pool if hasattr(engine, "sync_engine") else engine.pool
    assert _listeners(pool) == [1, 1]


def test_a_plain_pool_used_for_affine_blocks_gets_its_reset_listener() -> None:
    """On a pool that is not mtm's, the first affine block installs the listener that
    resets a tenant-bound connection before any other checkout. It must be installed on
    every such pool, also one made where a disposed pool lived, or tenant state would
    reach the pool's next plain user."""
    from mtm import session

    url = "postgresql://nobody@127.0.0.1:9/nowhere"
    disposed, missing = [], 0
    for _ in range(1000):
        engine = sa.create_engine(url, poolclass=sa.pool.QueuePool)
        session._install_affinity(engine)
        engine.dispose()
        disposed.append(engine)
        fresh = sa.create_engine(url, poolclass=sa.pool.QueuePool)
        session._install_affinity(fresh)
        missing += session._reset_on_plain_checkout not in fresh.pool.dispatch.checkout
    assert missing == 0, f"{missing} of 1000 pools without the reset listener"


@pytest.mark.parametrize("affine", [False, True], ids=["default", "affine"])
def test_a_connection_killed_by_the_server_is_replaced(fleet: Fleet, affine: bool) -> None:
    """The bind on checkout is the pre-ping: a connection the server terminated while
    it idled bound to t0 (or reset) is replaced, and the next blocks, of t0 or another
    tenant, run on a new session bound to their tenant, with nothing of t0's."""
    engine = mtm.create_app_engine(fleet.url, pool_size=1, max_overflow=0)
    t0, t1 = fleet.tenants[:2]
    try:
        for schema in (t0, t1):
            with mtm.tenant_connection(engine, t0, affine=affine) as conn:
                _leave_state(conn, t0)
                pid = _pid(conn)
            with psycopg.connect(fleet.admin, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s::int, 10000)", [pid])
            with mtm.tenant_connection(engine, schema, affine=affine) as conn:
                assert _pid(conn) != pid
                assert _seen(conn) == _fresh(schema)
    finally:
        engine.dispose()


@pytest.mark.parametrize("affine", [False, True], ids=["default", "affine"])
def test_a_failed_transaction_and_a_refused_bind_leave_nothing(fleet: Fleet, affine: bool) -> None:
    """A block ending inside a failed transaction, and a block whose role does not exist
    (its bind refused on checkout): the next block of another tenant finds a fresh
    session on the same connection."""
    engine = mtm.create_app_engine(fleet.url, pool_size=1, max_overflow=0)
    t0, t1, t2 = fleet.tenants[:3]
    try:
        with pytest.raises(sa.exc.DBAPIError), mtm.tenant_connection(engine, t0) as conn:
            pid = _pid(conn)
            _leave_state(conn, t0)
            conn.execute(sa.text("CREATE TEMP TABLE uncommitted (a int)"))
            conn.execute(sa.text("SELECT 1/0"))
        with mtm.tenant_connection(engine, t1, affine=affine) as conn:
            assert (_pid(conn), _seen(conn)) == (pid, _fresh(t1))
            _leave_state(conn, t1)
        with pytest.raises(sa.exc.DataError, match="no_such_role"):
            with mtm.tenant_connection(engine, t2, role="no_such_role", affine=affine):
                pass
        with mtm.tenant_connection(engine, t2, affine=affine) as conn:
            assert _seen(conn) == _fresh(t2)
    finally:
        engine.dispose()


def _check(schema: str, affine: bool) -> Callable[[sa.Connection], list[str]]:
    """A block that reports any state not of its own tenant (an affine block may find
    its own tenant's), then leaves its own."""

    def fn(conn: sa.Connection) -> list[str]:
        seen = _seen(conn)
        fresh = _fresh(schema)
        own = (fresh[0], schema, ["owner"], [schema], 1, [f"{schema}_q"], fresh[6])
        if seen != fresh and not (affine and seen == own):
            return [f"{schema} (affine={affine}) saw {seen}"]
        if seen == fresh:
            _leave_state(conn, schema)
        return []

    return fn


def test_many_tenants_in_threads_never_see_each_other(fleet: Fleet) -> None:
    """Eight threads, ten tenants in random order, affine and default blocks mixed, on a
    pool of four: every block sees its own tenant's state or a fresh session."""
    engine = mtm.create_app_engine(fleet.url, pool_size=4, max_overflow=0)
    problems: list[str] = []
    blocks = [0]
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            schema, affine = rng.choice(fleet.tenants), rng.random() < 0.7
            with mtm.tenant_connection(engine, schema, affine=affine) as conn:
                found = _check(schema, affine)(conn)
            with lock:
                problems.extend(found)
                blocks[0] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.dispose()
    assert problems == [] and blocks[0] == 8 * 60


def test_many_tenants_in_asyncio_never_see_each_other(fleet: Fleet) -> None:
    async def main() -> tuple[list[str], int]:
        engine = mtm.create_async_app_engine(fleet.url, pool_size=4, max_overflow=0)
        problems: list[str] = []
        blocks = 0

        async def worker(seed: int) -> None:
            nonlocal blocks
            rng = random.Random(seed)
            for _ in range(60):
                schema, affine = rng.choice(fleet.tenants), rng.random() < 0.7
                async with mtm.async_tenant_connection(engine, schema, affine=affine) as conn:
                    problems.extend(await conn.run_sync(_check(schema, affine)))
                    await asyncio.sleep(0)  # let the other tasks interleave
                blocks += 1

        try:
            await asyncio.gather(*(worker(n) for n in range(8)))
        finally:
            await engine.dispose()
        return problems, blocks

    assert asyncio.run(main()) == ([], 8 * 60)
