"""Hostile tenants on a pooled connection: no session state crosses from one to the next.

A pool of ONE connection serves tenant acme, then tenant globex. Whatever acme's block
leaves in the session (temp objects, settings, role, prepared statements, cursors,
LISTEN, advisory locks, sequence state), globex's next block must find the session as
a fresh connection would be. Each kind runs sync and asyncio, with and without the
tenant role.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

import mtm
from conftest import make_project


@dataclass(frozen=True)
class Fleet:
    url: str
    acme: str
    globex: str


@pytest.fixture(scope="module")
def fleet(
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Fleet]:
    """One database for the module: tenants acme_* and globex_*, each with its role
    (``role=True`` names it ``mtm_tenant_<schema>``; the suffix keeps the names of this
    run apart on a shared server) and a ``customers`` table with one row. On a Citus
    cluster the roles can log in: Citus reaches the workers as the role itself."""
    url = module_database_url
    login = bool(request.config.getoption("--citus"))
    project = make_project(tmp_path_factory.mktemp("state") / "app", url)
    project.write(
        "tenant", "0001_customers.sql", "CREATE TABLE customers (id serial PRIMARY KEY, name text);"
    )
    suffix = uuid.uuid4().hex[:6]
    acme, globex = f"acme_{suffix}", f"globex_{suffix}"
    created: list[str] = []
    try:
        for schema in (acme, globex):
            mtm.create(project.config, schema, role=True, login=login)
            created.append(schema)
            project.query(f"INSERT INTO {schema}.customers (name) VALUES ('{schema} customer')")
        yield Fleet(url, acme, globex)
    finally:
        for schema in created:
            mtm.drop(project.config, schema, yes=True)  # takes the tenant's role with it


Block = Callable[[str, Callable[[sa.Connection], Any]], Any]


@pytest.fixture(
    params=[
        "sync",
        "async",
        "sync-affine",
        "async-affine",
        "sync-queuepool",
        "async-queuepool-affine",
    ]
)
def block_factory(
    request: pytest.FixtureRequest, fleet: Fleet
) -> Iterator[Callable[[bool], Block]]:
    """``block_factory(role)`` gives ``block(schema, fn)``: runs ``fn(conn)`` inside
    ``tenant_connection`` (or ``async_tenant_connection``, through ``run_sync``) on an
    engine with a pool of one connection, and returns what ``fn`` returned. The
    ``-affine`` forms pass ``affine=True``: the guarantees across tenants are the same.
    The engines have mtm's tenant pool, except the ``-queuepool`` forms: SQLAlchemy's own
    pool, on which the blocks bind and reset by themselves."""
    loop = asyncio.new_event_loop()
    affine = request.param.endswith("-affine")
    queuepool = "-queuepool" in request.param
    disposers: list[Callable[[], None]] = []

    def factory(role: bool) -> Block:
        if request.param.startswith("sync"):
            pool = {"poolclass": sa.pool.QueuePool} if queuepool else {}
            engine = mtm.create_app_engine(fleet.url, pool_size=1, max_overflow=0, **pool)
            disposers.append(engine.dispose)

            def block(schema: str, fn: Callable[[sa.Connection], Any]) -> Any:
                with mtm.tenant_connection(engine, schema, role=role, affine=affine) as conn:
                    return fn(conn)

            return block
        apool = {"poolclass": sa.pool.AsyncAdaptedQueuePool} if queuepool else {}
        aengine = mtm.create_async_app_engine(fleet.url, pool_size=1, max_overflow=0, **apool)
        disposers.append(lambda: loop.run_until_complete(aengine.dispose()))

        def ablock(schema: str, fn: Callable[[sa.Connection], Any]) -> Any:
            async def run() -> Any:
                async with mtm.async_tenant_connection(
                    aengine, schema, role=role, affine=affine
                ) as conn:
                    return await conn.run_sync(fn)

            return loop.run_until_complete(run())

        return ablock

    try:
        yield factory
    finally:
        for dispose in disposers:
            dispose()
        loop.close()


def _names(conn: sa.Connection) -> list[str]:
    return list(conn.execute(sa.text("SELECT name FROM customers ORDER BY id")).scalars())


def _pid(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


# Everything a session can carry that a query can see. pg_settings does not list custom
# settings (``app.x``): they are read by name; after ``SET app.x`` even DISCARD ALL
# leaves the name defined, with the value '' instead of a fresh session's NULL.
FINGERPRINT = """
SELECT current_user, session_user,
  (SELECT array_agg(name || '=' || setting ORDER BY name) FROM pg_settings),
  coalesce(current_setting('app.tenant', true), '') || '/'
  || coalesce(current_setting('app.user', true), ''),
  (SELECT array_agg(name ORDER BY name) FROM pg_prepared_statements WHERE from_sql),
  (SELECT array_agg(name ORDER BY name) FROM pg_cursors WHERE name <> ''),
  (SELECT array_agg(c ORDER BY c) FROM pg_listening_channels() c),
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
  (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
  + (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema())
  + (SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema())
"""


def _session_state(conn: sa.Connection) -> tuple[Any, ...]:
    """The fingerprint, plus whether ``lastval()`` (sequence state) is defined."""
    state = tuple(conn.execute(sa.text(FINGERPRINT)).one())
    conn.commit()
    try:
        lastval: Any = conn.execute(sa.text("SELECT lastval()")).scalar()
    except sa.exc.DBAPIError as exc:
        lastval = getattr(exc.orig, "sqlstate", None)
    conn.rollback()
    return (*state, lastval)


# (kind, statements acme's block runs, also possible for a tenant role (role=True),
#  also possible without it)
KINDS: list[tuple[str, list[str], bool, bool]] = [
    ("temp table", ["CREATE TEMP TABLE customers AS SELECT * FROM customers"], True, True),
    ("temp table on commit", ["CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS"], True, True),
    ("temp view", ["CREATE TEMP VIEW v AS SELECT 1 AS x"], True, True),
    ("temp sequence", ["CREATE TEMP SEQUENCE s"], True, True),
    (
        "temp function",
        ["CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'"],
        True,
        True,
    ),
    ("temp type", ["CREATE TYPE pg_temp.pair AS (a int, b int)"], True, True),
    ("search_path", ["SET search_path TO pg_catalog"], True, True),
    ("statement_timeout", ["SET statement_timeout = '1h'"], True, True),
    ("read only default", ["SET default_transaction_read_only = on"], True, True),
    (
        "isolation default",
        ["SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
        True,
        True,
    ),
    ("client_encoding", ["SET client_encoding = 'LATIN1'"], True, True),
    ("time zone", ["SET TIME ZONE 'Pacific/Auckland'"], True, True),
    ("application_name", ["SET application_name = 'acme'"], True, True),
    ("custom setting", ["SET app.tenant = 'acme'"], True, True),
    ("set_config", ["SELECT set_config('app.user', 'wile', false)"], True, True),
    ("work_mem", ["SELECT set_config('work_mem', '77MB', false)"], True, True),
    ("row_security", ["SET row_security = off"], True, True),
    ("PREPARE", ["PREPARE q AS SELECT name FROM customers"], True, True),
    ("WITH HOLD cursor", ["DECLARE c CURSOR WITH HOLD FOR SELECT name FROM customers"], True, True),
    ("LISTEN", ["LISTEN acme_events"], True, True),
    ("advisory lock", ["SELECT pg_advisory_lock(4711)"], True, True),
    ("shared advisory lock", ["SELECT pg_advisory_lock_shared(4712)"], True, True),
    ("sequence state", ["SELECT nextval('customers_id_seq')"], True, True),
    ("RESET ROLE", ["RESET ROLE"], True, False),  # leaves the tenant role: the pool's user
    ("SET ROLE", ["SET ROLE pg_monitor"], False, True),
    ("session authorization", ["SET SESSION AUTHORIZATION {globex_role}"], False, True),
    ("session_replication_role", ["SET session_replication_role = replica"], False, True),
]

CASES = [
    pytest.param(statements, role, id=f"{kind}-{'role' if role else 'no role'}")
    for kind, statements, with_role, without_role in KINDS
    for role in (True, False)
    if (with_role if role else without_role)
]


@pytest.mark.parametrize(("statements", "role"), CASES)
def test_no_session_state_crosses_to_the_next_tenant(
    fleet: Fleet, block_factory: Callable[[bool], Block], statements: list[str], role: bool
) -> None:
    block = block_factory(role)
    fresh_acme = block(fleet.acme, _session_state)  # the pool's one connection, as new
    fresh = block(fleet.globex, _session_state)
    pid = block(fleet.globex, _pid)
    globex_role = mtm.tenant_role(mtm.Config(), fleet.globex)

    def acme(conn: sa.Connection) -> tuple[Any, ...]:
        for sql in statements:
            conn.execute(sa.text(sql.format(globex_role=f'"{globex_role}"')))
        conn.commit()
        return _session_state(conn)

    changed = block(fleet.acme, acme)
    assert changed != fresh_acme  # the block did change the session

    def globex(conn: sa.Connection) -> tuple[int, tuple[Any, ...], list[str]]:
        return _pid(conn), _session_state(conn), _names(conn)

    assert block(fleet.globex, globex) == (pid, fresh, [f"{fleet.globex} customer"])


@pytest.mark.parametrize("role", [True, False], ids=["role", "no role"])
def test_acme_temp_table_is_gone_for_globex(
    fleet: Fleet, block_factory: Callable[[bool], Block], role: bool
) -> None:
    """The reported attack: acme copies its customers into a temp table named like the
    tenant table; globex's next block on the same connection must neither read nor
    write it."""
    block = block_factory(role)

    def acme(conn: sa.Connection) -> int:
        conn.execute(sa.text("CREATE TEMP TABLE customers AS SELECT * FROM customers"))
        conn.commit()
        assert conn.execute(sa.text("SELECT count(*) FROM pg_temp.customers")).scalar() == 1
        return _pid(conn)

    pid = block(fleet.acme, acme)

    def globex(conn: sa.Connection) -> tuple[int, list[str], Any]:
        seen = _names(conn)
        conn.execute(sa.text("INSERT INTO customers (name) VALUES ('globex new')"))
        conn.commit()
        temp = conn.execute(sa.text("SELECT to_regclass('pg_temp.customers')")).scalar()
        names = _names(conn)
        conn.execute(sa.text("DELETE FROM customers WHERE name = 'globex new'"))
        conn.commit()
        return _pid(conn), [*seen, *names], temp

    g = f"{fleet.globex} customer"
    assert block(fleet.globex, globex) == (pid, [g, g, "globex new"], None)
    assert block(fleet.acme, _names) == [f"{fleet.acme} customer"]


@pytest.mark.parametrize("role", [True, False], ids=["role", "no role"])
def test_a_temp_table_cannot_shadow_a_tenant_table_within_a_block(
    fleet: Fleet, block_factory: Callable[[bool], Block], role: bool
) -> None:
    block = block_factory(role)

    def shadow(conn: sa.Connection) -> tuple[str, list[str], int]:
        conn.execute(sa.text("CREATE TEMP TABLE customers (id int, name text)"))
        conn.execute(sa.text("INSERT INTO pg_temp.customers VALUES (1, 'decoy')"))
        conn.commit()
        path = conn.execute(sa.text("SHOW search_path")).scalar()
        names = _names(conn)  # unqualified: the tenant's table, not the decoy
        conn.execute(sa.text("UPDATE customers SET name = name WHERE id > 0"))
        decoy = conn.execute(sa.text("SELECT count(*) FROM pg_temp.customers")).scalar()
        conn.rollback()
        return str(path), names, int(decoy)

    path, names, decoy = block(fleet.acme, shadow)
    assert path == f'"{fleet.acme}", public, pg_temp'
    assert names == [f"{fleet.acme} customer"]
    assert decoy == 1


@pytest.mark.parametrize("role", [True, False], ids=["role", "no role"])
def test_statements_psycopg_prepared_still_work_after_the_reset(
    fleet: Fleet, block_factory: Callable[[bool], Block], role: bool
) -> None:
    """psycopg prepares a statement it has run 5 times; the reset deallocates it on the
    server, so psycopg must forget it too (psycopg >= 3.3.6) or the next run fails with
    'prepared statement "_pg3_0" does not exist'."""
    block = block_factory(role)
    query = sa.text("SELECT name FROM customers WHERE id > :i")

    def run_often(conn: sa.Connection) -> int:
        for _ in range(8):
            conn.execute(query, {"i": 0}).all()
        prepared = conn.execute(
            sa.text("SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql")
        ).scalar_one()
        conn.commit()  # no transaction left: a ROLLBACK would empty psycopg's cache anyway
        return int(prepared)

    assert block(fleet.acme, run_often) >= 1  # psycopg did prepare it
    assert block(fleet.globex, run_often) >= 1  # and again, after the reset

    def run_once(conn: sa.Connection) -> list[str]:
        names = list(conn.execute(query, {"i": 0}).scalars())
        conn.commit()
        return names

    assert block(fleet.acme, run_once) == [f"{fleet.acme} customer"]


# Tenant affinity (``affine=True``): what persists between blocks of the same tenant, and
# that nothing leaves the tenant by any other way out of the pool.

MARK = [
    "CREATE TEMP TABLE mark AS SELECT current_schemas(false) AS path",
    "SET app.tenant = 'marked'",
    "PREPARE q AS SELECT 1",
    "LISTEN marked",
    "SELECT pg_advisory_lock(4713)",
]


def _marks(conn: sa.Connection) -> tuple[Any, ...]:
    """Which of MARK's session state a block sees (all but the first need no table)."""
    row = conn.execute(
        sa.text(
            "SELECT to_regclass('pg_temp.mark') IS NOT NULL,"
            " coalesce(current_setting('app.tenant', true), ''),"
            " (SELECT count(*) FROM pg_prepared_statements WHERE from_sql),"
            " (SELECT count(*) FROM pg_listening_channels()),"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            "  AND pid = pg_backend_pid()),"
            " current_setting('search_path'), pg_backend_pid()"
        )
    ).one()
    conn.rollback()
    return tuple(row)


def _mark(conn: sa.Connection) -> int:
    for sql in MARK:
        conn.execute(sa.text(sql))
    conn.commit()
    conn.execute(sa.text("CREATE TEMP TABLE uncommitted (a int)"))  # rolled back at the end
    return _pid(conn)


@pytest.fixture
def affine_engine(fleet: Fleet) -> Iterator[sa.Engine]:
    engine = mtm.create_app_engine(fleet.url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("role", [True, False], ids=["role", "no role"])
def test_affine_state_persists_for_the_same_tenant_only(
    fleet: Fleet, affine_engine: sa.Engine, role: bool
) -> None:
    """The contract: committed session state stays for the next affine block of the SAME
    tenant (on the same connection); an open transaction never does; the next block of
    another tenant finds a fresh session."""

    def block(schema: str, fn: Callable[[sa.Connection], Any]) -> Any:
        with mtm.tenant_connection(affine_engine, schema, role=role, affine=True) as conn:
            return fn(conn)

    pid = block(fleet.acme, _mark)
    path = f'"{fleet.acme}", public, pg_temp'
    assert block(fleet.acme, _marks) == (True, "marked", 1, 1, 1, path, pid)
    assert (
        block(
            fleet.acme,
            lambda c: c.execute(sa.text("SELECT to_regclass('pg_temp.uncommitted')")).scalar(),
        )
        is None
    )
    globex_path = f'"{fleet.globex}", public, pg_temp'
    assert block(fleet.globex, _marks) == (False, "", 0, 0, 0, globex_path, pid)
    assert block(fleet.acme, _marks) == (False, "", 0, 0, 0, path, pid)  # gone for good


def test_a_plain_checkout_resets_an_affine_connection(
    fleet: Fleet, affine_engine: sa.Engine
) -> None:
    """engine.connect(), engine.begin() and non-affine blocks never see a tenant's
    binding or state: the pool resets the connection on their checkout."""
    with mtm.tenant_connection(affine_engine, fleet.acme, role=True, affine=True) as conn:
        pid = _mark(conn)
    with affine_engine.connect() as conn:
        plain = _marks(conn)
        user = conn.execute(sa.text("SELECT current_user = session_user")).scalar()
    assert plain[:5] == (False, "", 0, 0, 0) and plain[6] == pid and user is True
    assert fleet.acme not in plain[5]
    with mtm.tenant_connection(affine_engine, fleet.acme, affine=True) as conn:
        _mark(conn)
    with mtm.tenant_connection(affine_engine, fleet.acme) as conn:  # not affine
        assert _marks(conn)[:5] == (False, "", 0, 0, 0)
    with mtm.tenant_connection(affine_engine, fleet.acme, affine=True) as conn:
        assert _marks(conn)[:5] == (False, "", 0, 0, 0)  # the non-affine block reset it


def _own_state_only(schema: str) -> Callable[[sa.Connection], list[str]]:
    """A block that checks it sees only its own tenant's state (or none), then leaves
    its own marks: a session setting, a temp table, a LISTEN."""

    def fn(conn: sa.Connection) -> list[str]:
        seen = conn.execute(
            sa.text(
                "SELECT coalesce(current_setting('app.tenant', true), ''),"
                " current_setting('search_path'),"
                " (SELECT array_agg(c) FROM pg_listening_channels() c)"
            )
        ).one()
        temp = conn.execute(sa.text("SELECT to_regclass('pg_temp.owner')")).scalar()
        owner = None
        if temp is not None:
            owner = conn.execute(sa.text("SELECT name FROM pg_temp.owner")).scalar()
        else:
            conn.execute(sa.text("CREATE TEMP TABLE owner AS SELECT :s AS name"), {"s": schema})
        conn.execute(sa.text("SELECT set_config('app.tenant', :s, false)"), {"s": schema})
        conn.execute(sa.text(f"LISTEN {schema}"))
        conn.commit()
        wrong = []
        if seen[0] not in ("", schema):
            wrong.append(f"setting {seen[0]}")
        if seen[1] != f'"{schema}", public, pg_temp':
            wrong.append(f"search_path {seen[1]}")
        if any(c != schema for c in seen[2] or []):
            wrong.append(f"listening {seen[2]}")
        if owner not in (None, schema):
            wrong.append(f"temp table of {owner}")
        if _names(conn) != [f"{schema} customer"]:
            wrong.append("customers")
        return wrong

    return fn


def test_affine_blocks_in_threads_never_see_another_tenant(fleet: Fleet) -> None:
    """Six threads, two tenants, a pool of two connections: every block sees only its own
    tenant's state, or a fresh session."""
    engine = mtm.create_app_engine(fleet.url, pool_size=2, max_overflow=0)
    tenants = [fleet.acme, fleet.globex]
    problems: list[str] = []
    pids: set[int] = set()

    def worker(n: int) -> None:
        for i in range(40):
            schema = tenants[(n + i // (n + 1)) % 2]
            with mtm.tenant_connection(engine, schema, affine=True) as conn:
                problems.extend(_own_state_only(schema)(conn))
                pids.add(_pid(conn))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.dispose()
    assert problems == [] and len(pids) <= 2


def test_affine_blocks_in_asyncio_never_see_another_tenant(fleet: Fleet) -> None:
    tenants = [fleet.acme, fleet.globex]

    async def main() -> list[str]:
        engine = mtm.create_async_app_engine(fleet.url, pool_size=2, max_overflow=0)
        problems: list[str] = []

        async def worker(n: int) -> None:
            for i in range(40):
                schema = tenants[(n + i // (n + 1)) % 2]
                async with mtm.async_tenant_connection(engine, schema, affine=True) as conn:
                    problems.extend(await conn.run_sync(_own_state_only(schema)))
                    await asyncio.sleep(0)  # let the other workers interleave

        try:
            await asyncio.gather(*(worker(n) for n in range(6)))
        finally:
            await engine.dispose()
        return problems

    assert asyncio.run(main()) == []
