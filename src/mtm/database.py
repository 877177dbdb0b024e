"""Connections: the URL to use, engines, search_path, and the advisory locks.

The runner talks to PostgreSQL through SQLAlchemy connections in autocommit mode and
sends its own ``BEGIN``/``COMMIT``: that lets one round trip carry a whole step (lock,
search_path, migration, ledger row, commit) while Alembic's ``op`` still works on the
same connection for Python migrations.
"""

from __future__ import annotations

import os
import re
import socket
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .config import Config, mask_url, sqlalchemy_url
from .embedded import EmbeddedServer
from .errors import DatabaseUnavailable, LockHeld
from .identifiers import quote_literal

# Advisory lock key spaces (first int4 of the two-key form): "mtm" in ASCII.
RUN_LOCK_CLASS = 0x6D746D
SCHEMA_LOCK_CLASS = 0x6D746E


def resolve_url(config: Config) -> str:
    """The configured database URL, or the embedded server's (started if need be)."""
    if config.database_url:
        return config.database_url
    return EmbeddedServer(config.embedded_data_dir).start()


def create_engine(config: Config, *, pool_size: int = 2, purpose: str = "mtm") -> Engine:
    """An engine in autocommit mode; mtm issues BEGIN/COMMIT itself."""
    url = sqlalchemy_url(resolve_url(config))
    return sa.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=2,
        connect_args={"application_name": purpose[:63], "connect_timeout": 10},
    )


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection, or a DatabaseUnavailable that says which database and why."""
    try:
        conn = engine.connect()
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        shown = mask_url(engine.url.render_as_string(hide_password=True))
        raise DatabaseUnavailable(f"cannot connect to {shown}: {reason}") from None
    try:
        yield conn
    finally:
        conn.close()


def driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy one, for multi-statement round trips."""
    dbapi = conn.connection.driver_connection
    assert isinstance(dbapi, psycopg.Connection)
    return dbapi


def run_script(conn: Connection, sql: str) -> None:
    """Send a script of several statements as one simple query (one round trip)."""
    driver(conn).execute(sql.encode("utf-8"), prepare=False)


def rollback_quietly(conn: Connection) -> None:
    """End whatever transaction a failed script left open."""
    try:
        dbapi = driver(conn)
        if dbapi.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            dbapi.execute("ROLLBACK")
    except psycopg.Error:
        pass


def schema_lock_sql(schema: str) -> str:
    """Serialise every change to one schema: create, migrate, down and drop take this."""
    return f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_CLASS}, hashtext({quote_literal(schema)}))"


def run_lock_key(config: Config) -> int:
    return zlib.crc32(f"mtm:run:{config.migrations_table}".encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    client: str | None
    since: datetime | None


def lock_holder(conn: Connection, config: Config) -> LockHolder | None:
    row = conn.execute(
        sa.text(
            "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :c AND l.objid = :o "
            "AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())"
        ),
        {"c": RUN_LOCK_CLASS, "o": run_lock_key(config)},
    ).first()
    if row is None:
        return None
    return LockHolder(row[0], row[1] or "", row[2], row[3])


def run_label(command: str) -> str:
    """What another run sees as the lock holder's application_name."""
    return f"mtm {command} pid={os.getpid()} host={socket.gethostname()}"[:63]


def acquire_run_lock(conn: Connection, config: Config, *, wait: float, command: str) -> None:
    """Take the database-wide run lock on ``conn`` (a session lock) or raise LockHeld.

    Waits up to ``wait`` seconds, polling, then names the holder and since when.
    """
    conn.execute(
        sa.text("SELECT set_config('application_name', :n, false)"), {"n": run_label(command)}
    )
    deadline = time.monotonic() + max(wait, 0.0)
    key = run_lock_key(config)
    while True:
        got = conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:c, :o)"), {"c": RUN_LOCK_CLASS, "o": key}
        ).scalar()
        if got:
            return
        if time.monotonic() >= deadline:
            holder = lock_holder(conn, config)
            if holder is None:
                who = "another session"
            else:
                since = holder.since.strftime("%Y-%m-%d %H:%M:%S %Z") if holder.since else "?"
                where = f" from {holder.client}" if holder.client else ""
                who = (
                    f"{holder.application_name or 'another session'} "
                    f"(backend pid {holder.pid}{where}, connected since {since})"
                    + _dead_holder_hint(holder)
                )
            waited = f" after waiting {wait:g}s" if wait > 0 else ""
            raise LockHeld(
                f"another mtm run holds the migration lock{waited}: {who}; "
                "try again when it has finished, or pass --lock-wait SECONDS"
            )
        time.sleep(min(0.25, max(deadline - time.monotonic(), 0.01)))


_LABEL_RE = re.compile(r"mtm \S+ pid=(\d+) host=(\S+)")


def _dead_holder_hint(holder: LockHolder) -> str:
    """If the holder is an mtm process of this host that no longer runs, say so.

    A killed run's session lives on in the server until its statement in flight ends
    (then it commits or rolls back that step as a whole, and the lock goes with it).
    """
    match = _LABEL_RE.fullmatch(holder.application_name)
    if match is None:
        return ""
    pid, host = int(match.group(1)), match.group(2)
    if not socket.gethostname().startswith(host):
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return (
            f"; process {pid} is no longer running: its session ends when its statement in "
            f"flight does, or end it now with SELECT pg_terminate_backend({holder.pid})"
        )
    except OSError:
        pass
    return ""


def release_run_lock(conn: Connection, config: Config) -> None:
    conn.execute(
        sa.text("SELECT pg_advisory_unlock(:c, :o)"),
        {"c": RUN_LOCK_CLASS, "o": run_lock_key(config)},
    )
