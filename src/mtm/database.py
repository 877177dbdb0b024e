"""Connections: the URL to use, engines, kept connections, one-round-trip scripts.

The runner talks to PostgreSQL through SQLAlchemy connections in autocommit mode and
sends its own ``BEGIN``/``COMMIT``: that lets one round trip carry a whole step (lock,
search_path, migration, ledger row, commit) while Alembic's ``op`` still works on the
same connection for Python migrations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg

from . import conninfo, sqlrun, sqlscript
from .config import Config, mask_url, sqlalchemy_url
from .embedded import EmbeddedServer
from .errors import DatabaseUnavailable, MtmError
from .locks import SCHEMA_BUSY, pause, waiting_for
from .sqlrun import Conn

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection, Engine

    from .migrations import MigrationSet
    from .results import CreateResult


def resolve_url(config: Config) -> str:
    """The configured database URL, or the embedded server's (started if need be)."""
    if config.database_url:
        return config.database_url
    return EmbeddedServer(config.embedded_data_dir).start()


def create_engine(config: Config, *, pool_size: int = 2, purpose: str = "mtm") -> Engine:
    """An engine in autocommit mode; mtm issues BEGIN/COMMIT itself.

    ``use_native_hstore=False``: mtm reads and writes no hstore, and the dialect would
    otherwise look the type up at the first connection (a transaction and a catalog
    query: three round trips and ~5 ms of every command's start)."""
    import sqlalchemy as sa  # not at import: the read commands run without it (sqlrun)

    url = sqlalchemy_url(resolve_url(config))
    engine = sa.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=2,
        connect_args=_connect_args(_url_options(url), purpose),
        use_native_hstore=False,
    )
    sa.event.listen(engine, "connect", _note_citus)
    return engine


@contextmanager
def direct(config: Config, *, purpose: str = "mtm") -> Iterator[Conn]:
    """A connection for a command that only reads: psycopg's own, in autocommit mode,
    with the parameters and notes of an engine's (``create_engine``), when libpq reads
    the URL as SQLAlchemy would (``conninfo``); otherwise an engine's connection.

    Why: importing SQLAlchemy costs a read command more than its queries (0.2-0.3 s on
    the 2-vCPU machine, docs/performance.md, "Sixth round")."""
    url = resolve_url(config)
    params = conninfo.libpq_params(url)
    if params is None:
        engine = create_engine(config, pool_size=1, purpose=purpose)
        try:
            with checkout(engine) as conn:
                yield conn
        finally:
            engine.dispose()
        return
    try:
        raw = psycopg.connect(**{**params, **_connect_args("", purpose)}, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or ["?"])[0]
        raise _unavailable(conninfo.shown(url), reason) from None
    try:  # closed, never rolled back: autocommit, and a reply may still be in flight
        sqlrun.notes(raw)[APART] = _has_citus(raw)
        yield raw
    finally:
        raw.close()


# A connection's ``info`` key: send scripts one statement per query (a Citus database).
APART = "mtm.statements_apart"


def _note_citus(dbapi_connection: Any, record: Any) -> None:
    """Note whether a new connection's database has Citus. Citus sends some DDL on a
    Citus table (CREATE INDEX, ADD CONSTRAINT, SET NOT NULL, RENAME COLUMN...) to the
    workers as the original query text: a multi-statement script fails there with
    "cannot insert multiple commands into a prepared statement", so on such a database
    ``run_script`` sends each such statement as a query of its own."""
    record.info[APART] = _has_citus(dbapi_connection)
    if dbapi_connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        dbapi_connection.rollback()


def _has_citus(dbapi: psycopg.Connection[Any]) -> bool:
    """Whether a new connection's database has the citus extension (its ``APART`` note)."""
    found = dbapi.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone()
    return found is not None


def _unavailable(named: str, reason: str) -> DatabaseUnavailable:
    """A first connection that failed, in one line: which database (its password
    masked), and the reason the driver gave."""
    return DatabaseUnavailable(mask_url(f"cannot connect to {mask_url(named)}: {reason}"))


def _url_options(url: URL) -> str:
    """The ``options`` of a URL's query (kept by ``_connect_args``)."""
    given = url.query.get("options", "")
    return " ".join(given) if isinstance(given, tuple) else given


def _connect_args(options: str, purpose: str) -> dict[str, Any]:
    """Connection parameters of mtm's own sessions.

    ``standard_conforming_strings`` is on from the session's start (kept by RESET ALL):
    the server lexes a step's whole script before a SET in it applies, and SQL files
    are checked with it on (``sqlscript``), so both must read backslashes alike even
    where a database or role turned it off. Options in the URL are kept.
    """
    return {
        "application_name": purpose[:63],
        "connect_timeout": 10,
        "options": f"{options} -c standard_conforming_strings=on".strip(),
    }


# DISCARD ALL without DEALLOCATE ALL and DISCARD PLANS: psycopg keeps its own prepared
# statements, which must survive (the server invalidates stale plans by itself).
RESET_SESSION = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)


# A kept connection is replaced after this many calls. A backend never forgets the
# catalog entries of the schemas it created: after 32,000 creates in a row on one
# backend, a create cost the server 9.4 ms of CPU against 5.7 ms on a new backend of
# the same database (PostgreSQL 15). One new connection per 1,000 creates keeps the
# cost flat for a negligible price (docs/performance.md, "100,000 tenants").
CALLS_PER_BACKEND = 1000
_CALLS = "mtm.calls"  # the count, in the pooled connection's info (kept across calls)


class Database:
    """Connections to one database kept between calls, owned by whoever opened them.

    ``mtm.create`` in a loop (a script creating many tenants, a burst of sign-ups)
    would otherwise open a connection per call: a new backend with cold catalog caches,
    which costs more than the create itself. Hold one of these instead::

        with mtm.connect(config) as db:
            db.create("acme", domains=["acme.example.com"])
            db.create("globex")

    Its life, like a ``psycopg_pool`` pool's: *created* with no connection open; the
    first call opens one; a connection given back is *reset* (settings, role, advisory
    locks, temporary tables: ``DISCARD ALL`` but for prepared statements, or closed if
    that fails) and *reused* by the next call (pinged first); *closed* by ``close()`` or
    the end of the ``with`` block, after which it refuses work. Calls from several
    threads at once each get their own connection (up to ``keep`` are kept). A
    connection is closed after ``CALLS_PER_BACKEND`` calls and the next call opens a
    new one: a backend's catalog caches keep every schema it has created, and each
    create was slower with them (see ``CALLS_PER_BACKEND``).
    """

    def __init__(self, config: Config, *, purpose: str = "mtm", keep: int = 4) -> None:
        import sqlalchemy as sa

        self.config = config
        url = sqlalchemy_url(resolve_url(config))
        self.engine = sa.create_engine(
            url,
            isolation_level="AUTOCOMMIT",
            pool_size=keep,  # kept at most; opened only when calls overlap
            max_overflow=16,
            pool_pre_ping=True,
            connect_args=_connect_args(_url_options(url), purpose),
        )
        sa.event.listen(self.engine, "checkin", _reset_on_checkin)
        sa.event.listen(self.engine, "connect", _note_citus)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A kept connection for one call; reset when the block ends."""
        if self._closed:
            raise MtmError("this mtm database object is closed; open another with mtm.connect")
        with checkout(self.engine) as conn:
            yield conn
            calls = conn.info[_CALLS] = conn.info.get(_CALLS, 0) + 1
            if calls >= CALLS_PER_BACKEND:
                conn.invalidate()  # closed now; the pool opens a new one when next asked

    def create(
        self,
        schema: str,
        *,
        domains: Sequence[str] = (),
        name: str | None = None,
        migrate: bool = True,
        migrations: MigrationSet | None = None,
        role: bool = False,
        login: bool = False,
        password_file: str | Path | None = None,
        seed: bool = True,
    ) -> CreateResult:
        """``mtm.create`` on a kept connection, with the same options."""
        from .commands.tenants import create_in  # the command layer sits above this one

        return create_in(
            self,
            schema,
            domains=domains,
            name=name,
            migrate=migrate,
            migrations=migrations,
            role=role,
            login=login,
            password_file=password_file,
            seed=seed,
        )

    def close(self) -> None:
        """Close every kept connection; the object cannot be used afterwards."""
        self._closed = True
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(config: Config, *, purpose: str = "mtm create") -> Database:
    """Kept connections to ``config``'s database (see ``Database``); close them after."""
    return Database(config, purpose=purpose)


def _reset_on_checkin(dbapi_connection: Any, record: Any) -> None:
    """Give a kept connection back as a new one would be; close it if that fails."""
    if dbapi_connection is None:
        return
    try:
        if dbapi_connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            dbapi_connection.execute("ROLLBACK")
        dbapi_connection.execute(RESET_SESSION, prepare=False)
    except psycopg.Error:
        dbapi_connection.close()  # the next checkout's ping replaces it


@contextmanager
def checkout(engine: Engine) -> Iterator[Connection]:
    """A connection, or a DatabaseUnavailable that says which database and why."""
    import sqlalchemy as sa

    try:
        conn = engine.connect()
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise _unavailable(engine.url.render_as_string(hide_password=True), reason) from None
    try:
        yield conn
    except BaseException:
        _drop_if_busy(conn)
        raise
    finally:
        conn.close()


def _drop_if_busy(conn: Connection) -> None:
    """A query still in flight (Ctrl-C landed inside it) leaves the session unusable:
    the close's rollback would fail with "another command is already in progress" and
    hide the interruption; the connection is dropped instead."""
    try:
        dbapi = None if conn.invalidated else conn.connection.driver_connection
        if dbapi is not None and dbapi.info.transaction_status in _BUSY:
            conn.invalidate()
    except Exception:  # the connection is gone already
        pass


_BUSY = (psycopg.pq.TransactionStatus.ACTIVE, psycopg.pq.TransactionStatus.UNKNOWN)


def join_script(statements: Sequence[str]) -> str:
    """Statements as one simple-query text. Each ends on a line of its own, so a
    migration whose last line is a ``--`` comment cannot swallow the separator."""
    return "".join(f"{s}\n;\n" for s in statements)


def run_script(conn: Connection, script: str | Sequence[str]) -> None:
    """Send a script (text, or a list of statements) as one simple query: one round trip
    (on a Citus database, one query per DDL statement: ``APART``).

    A whole transaction (a script that starts with ``BEGIN``) whose schema lock is
    taken (SQLSTATE MTM03, see ``locks.schema_lock_sql``) is rolled back and sent again
    until it gets the lock, waiting between tries outside any transaction.
    """
    sql = script if isinstance(script, str) else join_script(script)
    apart = bool(conn.info.get(APART))
    try:
        _send(sqlrun.driver(conn), sql, apart)
        return
    except psycopg.Error as exc:
        if exc.sqlstate != SCHEMA_BUSY or not sql.lstrip().upper().startswith("BEGIN"):
            raise
        schema = exc.diag.schema_name or ""
    rollback_quietly(conn)
    with waiting_for(sqlrun.driver(conn), schema):
        waited = pause(0.0)
        while True:
            try:
                _send(sqlrun.driver(conn), sql, apart)
                return
            except psycopg.Error as exc:
                if exc.sqlstate != SCHEMA_BUSY:
                    raise
            rollback_quietly(conn)
            waited += pause(waited)


# Statements Citus never resends as the query's text: they may share a query.
_SHAREABLE = {
    "DoStmt",
    "DeleteStmt",
    "InsertStmt",
    "SelectStmt",
    "TransactionStmt",
    "UpdateStmt",
    "VariableSetStmt",
}


def _send(dbapi: psycopg.Connection[Any], sql: str, apart: bool) -> None:
    """``sql`` in one query, or ``apart``: every other statement (DDL) in a query of its
    own, the statements between them together; it stops at the first that fails (as the
    server does within one query)."""
    if not apart:
        dbapi.execute(sql.encode("utf-8"), prepare=False)
        return
    shared: list[str] = []
    for statement in sqlscript.split(sql):
        if statement.kind in _SHAREABLE:
            shared.append(statement.text)
            continue
        if shared:
            dbapi.execute(join_script(shared).encode("utf-8"), prepare=False)
            shared = []
        dbapi.execute(statement.text.encode("utf-8"), prepare=False)
    if shared:
        dbapi.execute(join_script(shared).encode("utf-8"), prepare=False)


def rollback_quietly(conn: Connection) -> None:
    """End whatever transaction a failed script left open."""
    import sqlalchemy as sa

    try:
        if conn.invalidated:
            # The connection died under the transaction: SQLAlchemy refuses every use
            # until told that the transaction is over (no round trip is made).
            conn.rollback()
            return
        dbapi = sqlrun.driver(conn)
        if dbapi.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            dbapi.execute("ROLLBACK")
    except (psycopg.Error, sa.exc.SQLAlchemyError):
        pass
