"""Connections: the URL to use, engines, search_path, and the advisory locks.

The runner talks to PostgreSQL through SQLAlchemy connections in autocommit mode and
sends its own ``BEGIN``/``COMMIT``: that lets one round trip carry a whole step (lock,
search_path, migration, ledger row, commit) while Alembic's ``op`` still works on the
same connection for Python migrations.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

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
        connect_args=_connect_args(url, purpose),
    )


def _connect_args(url: URL, purpose: str) -> dict[str, Any]:
    """Connection parameters of mtm's own sessions.

    ``standard_conforming_strings`` is on from the session's start (kept by RESET ALL):
    the server lexes a step's whole script before a SET in it applies, and SQL files
    are checked with it on (``sqlscript``), so both must read backslashes alike even
    where a database or role turned it off. Options in the URL are kept.
    """
    given = url.query.get("options", "")
    options = " ".join(given) if isinstance(given, tuple) else given
    return {
        "application_name": purpose[:63],
        "connect_timeout": 10,
        "options": f"{options} -c standard_conforming_strings=on".strip(),
    }


# Engines kept between calls, per (URL, purpose); see shared_engine.
SHARED_ENGINES = 4
KEEP_IDLE = 2.0  # seconds a kept connection may go unused before it is closed


@dataclass
class _Kept:
    engine: Engine
    last_used: float


_SHARED: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
_SHARED_LOCK = threading.Lock()
_reaper: threading.Thread | None = None


def shared_engine(config: Config, *, purpose: str = "mtm") -> Engine:
    """A process-wide engine per database for commands called again and again.

    ``mtm.create`` in a loop (a script creating many tenants, a burst of sign-ups)
    would otherwise open a connection per call: a new backend with cold catalog
    caches, which costs more than the create itself. This engine keeps its connections
    between calls (one per concurrent caller, four at most), pings one when it is taken
    and resets it when it is given back (settings, role, advisory locks, temporary
    tables: ``DISCARD ALL`` but for prepared statements). Connections unused for
    ``KEEP_IDLE`` seconds are closed, so nothing lingers after a burst;
    ``dispose_shared_engines()`` closes them at once.
    """
    global _reaper
    url = resolve_url(config)
    key = (url, purpose)
    with _SHARED_LOCK:
        kept = _SHARED.get(key)
        if kept is None:
            engine = sa.create_engine(
                sqlalchemy_url(url),
                isolation_level="AUTOCOMMIT",
                pool_size=4,  # kept at most; opened only when calls overlap
                max_overflow=16,
                pool_pre_ping=True,
                connect_args=_connect_args(sqlalchemy_url(url), purpose),
            )
            kept = _Kept(engine, time.monotonic())
            sa.event.listen(engine, "checkin", _on_checkin(kept))
            _SHARED[key] = kept
            while len(_SHARED) > SHARED_ENGINES:
                _SHARED.popitem(last=False)[1].engine.dispose()
        _SHARED.move_to_end(key)
        kept.last_used = time.monotonic()  # the reaper leaves it alone while it is used
        if _reaper is None:
            _reaper = threading.Thread(target=_reap, name="mtm-idle-connections", daemon=True)
            _reaper.start()
        return kept.engine


# DISCARD ALL without DEALLOCATE ALL and DISCARD PLANS: psycopg keeps its own prepared
# statements, which must survive (the server invalidates stale plans by itself).
RESET_SESSION = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)


def _on_checkin(kept: _Kept) -> Callable[[Any, Any], None]:
    def reset(dbapi_connection: Any, record: Any) -> None:
        """Give a kept connection back as a new one would be; close it if that fails."""
        kept.last_used = time.monotonic()
        if dbapi_connection is None:
            return
        try:
            if dbapi_connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                dbapi_connection.execute("ROLLBACK")
            dbapi_connection.execute(RESET_SESSION, prepare=False)
        except psycopg.Error:
            dbapi_connection.close()  # the next checkout's ping replaces it

    return reset


def _reap() -> None:
    """Close kept engines unused for KEEP_IDLE seconds; end when none is left."""
    global _reaper
    while True:
        time.sleep(KEEP_IDLE / 4)
        now = time.monotonic()
        with _SHARED_LOCK:
            for key, kept in list(_SHARED.items()):
                pool: Any = kept.engine.pool
                if now - kept.last_used > KEEP_IDLE and pool.checkedout() == 0:
                    del _SHARED[key]
                    kept.engine.dispose()
            if not _SHARED:
                _reaper = None
                return


def dispose_shared_engines() -> None:
    """Close the connections kept by ``shared_engine``."""
    with _SHARED_LOCK:
        while _SHARED:
            _SHARED.popitem(last=False)[1].engine.dispose()


def _forget_shared_engines_after_fork() -> None:
    # A forked child must not use (or close) its parent's sockets, nor wait on a lock
    # or a reaper thread that did not come along.
    global _SHARED_LOCK, _reaper
    _SHARED_LOCK = threading.Lock()
    _reaper = None
    for kept in _SHARED.values():
        kept.engine.dispose(close=False)
    _SHARED.clear()


atexit.register(dispose_shared_engines)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shared_engines_after_fork)


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
