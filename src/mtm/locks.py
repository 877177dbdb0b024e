"""Advisory locks: one per schema for every change to it, one per database for a run.

Every transaction that changes a schema (create, a step, a revert, drop) first takes
that schema's transaction-level lock (``schema_lock_sql``). ``migrate`` also holds the
session-level run lock for the whole run, so two runs never overlap; its
``application_name`` says who holds it, which is what a refused run is told.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from . import sqlrun
from .config import Config
from .errors import LockHeld, UsageError
from .identifiers import do_block, quote_literal
from .sqlrun import Conn

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger("mtm.lock")

# Advisory lock key spaces (first int4 of the two-key form): "mtm" in ASCII.
RUN_LOCK_CLASS = 0x6D746D
SCHEMA_LOCK_CLASS = 0x6D746E
# Held by a command for each throwaway it builds, while it exists (``references``).
THROWAWAY_LOCK_CLASS = 0x6D746F


# Raised by a transaction that found its schema's lock taken (``schema_lock_sql``).
SCHEMA_BUSY = "MTM03"


def schema_lock_sql(schema: str) -> str:
    """Serialise every change to one schema: create, migrate, down and drop take this.

    It never waits in the server: it takes the lock or fails at once with SQLSTATE
    MTM03, and the caller waits outside any transaction and sends the script again
    (``database.run_script``). A session blocked on an advisory lock holds a snapshot,
    and ``CREATE INDEX CONCURRENTLY`` waits for every older snapshot to end: a command
    waiting in the server for a schema whose no-transaction step is building an index
    would stall that build, or deadlock with it.
    """
    key = f"{SCHEMA_LOCK_CLASS}, hashtext({quote_literal(schema)})"
    message = quote_literal(f"schema {schema} is busy")
    return do_block(
        f"BEGIN IF NOT pg_try_advisory_xact_lock({key}) THEN RAISE EXCEPTION {message} "
        f"USING ERRCODE = '{SCHEMA_BUSY}', SCHEMA = {quote_literal(schema)}; END IF; END"
    )


@contextmanager
def waiting_for(dbapi: psycopg.Connection[Any], schema: str) -> Iterator[None]:
    """While a session waits (outside any transaction) for ``schema``'s lock, its
    ``application_name`` says so, so that ``pg_stat_activity`` shows who waits for what,
    as it would for a wait inside the server. Logged once as ``lock.wait``."""
    log.info("waiting: schema %s is busy", schema, extra={"event": "lock.wait", "schema": schema})
    row = dbapi.execute("SELECT current_setting('application_name')").fetchone()
    before = row[0] if row else ""
    label = f"waiting for schema {schema}: {before}"[:63]
    dbapi.execute("SELECT set_config('application_name', %s, false)", (label,))
    try:
        yield
    finally:
        try:
            if dbapi.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                dbapi.execute("ROLLBACK")  # what the caller would do: the script failed
            dbapi.execute("SELECT set_config('application_name', %s, false)", (before,))
        except psycopg.Error:
            pass  # the connection is gone, and the label with it


def pause(waited: float) -> float:
    """Sleep between two tries for a busy lock (20 ms growing to 250 ms); the time slept."""
    delay = min(0.02 + waited / 4, 0.25)
    time.sleep(delay)
    return delay


def hold_schema(conn: Connection, schema: str) -> None:
    """Take ``schema``'s lock for the session: a no-transaction step holds it from its
    ledger check to its ledger row, so that no other command changes the schema in
    between. Polls, like ``schema_lock_sql``, so that no snapshot is held while waiting.
    The lock goes with the session if the connection dies."""
    params = {"c": SCHEMA_LOCK_CLASS, "s": schema}
    take = "SELECT pg_try_advisory_lock(%(c)s, hashtext(%(s)s))"
    if sqlrun.scalar(conn, take, params):
        return
    with waiting_for(sqlrun.driver(conn), schema):
        waited = pause(0.0)
        while not sqlrun.scalar(conn, take, params):
            waited += pause(waited)


def release_schema(conn: Conn, schema: str) -> None:
    sqlrun.rows(
        conn,
        "SELECT pg_advisory_unlock(%(c)s, hashtext(%(s)s))",
        {"c": SCHEMA_LOCK_CLASS, "s": schema},
    )


def release_quietly(conn: Conn, schema: str) -> None:
    """``release_schema`` on the way out of a failure it must not hide: on a connection
    that died, the lock died with the session."""
    import sqlalchemy as sa  # the caller's connection is SQLAlchemy's

    try:
        release_schema(conn, schema)
    except (psycopg.Error, sa.exc.DBAPIError):
        pass


def run_lock_key(config: Config) -> int:
    return zlib.crc32(f"mtm:run:{config.migrations_table}".encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    client: str | None
    since: datetime | None


def lock_holder(conn: Conn, config: Config) -> LockHolder | None:
    found = sqlrun.rows(
        conn,
        "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %(c)s "
        "AND l.objid = %(o)s AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database "
        "WHERE datname = current_database())",
        {"c": RUN_LOCK_CLASS, "o": run_lock_key(config)},
    )
    if not found:
        return None
    row = found[0]
    return LockHolder(row[0], row[1] or "", row[2], row[3])


def run_label(command: str) -> str:
    """What another run sees as the lock holder's application_name."""
    return f"mtm {command} pid={os.getpid()} host={socket.gethostname()}"[:63]


def check_lock_wait(wait: float) -> float:
    """``wait`` if it is a number of seconds mtm can wait (finite, 0 or more)."""
    if not isinstance(wait, int | float) or not math.isfinite(wait) or wait < 0:
        raise UsageError(f"--lock-wait must be a number of seconds, 0 or more; got {wait!r}")
    return float(wait)


def acquire_run_lock(conn: Conn, config: Config, *, wait: float, command: str) -> None:
    """Take the database-wide run lock on ``conn`` (a session lock) or raise LockHeld.

    Waits up to ``wait`` seconds, polling, then names the holder and since when.
    """
    if try_run_lock(conn, config, wait=wait, command=command):
        return
    waited = f" after waiting {wait:g}s" if wait > 0 else ""
    raise LockHeld(
        f"another mtm run holds the migration lock{waited}: {describe_holder(conn, config)}; "
        "try again when it has finished, or pass --lock-wait SECONDS"
    )


def try_run_lock(conn: Conn, config: Config, *, wait: float, command: str) -> bool:
    """Take the run lock on ``conn`` within ``wait`` seconds; say whether it was taken.

    Sets the session's application_name first, so that others see who holds it.
    """
    wait = check_lock_wait(wait)
    sqlrun.rows(
        conn, "SELECT set_config('application_name', %(n)s, false)", {"n": run_label(command)}
    )
    started = time.monotonic()
    deadline = started + max(wait, 0.0)
    key = run_lock_key(config)
    waiting = False
    while True:
        got = sqlrun.scalar(
            conn, "SELECT pg_try_advisory_lock(%(c)s, %(o)s)", {"c": RUN_LOCK_CLASS, "o": key}
        )
        if got or time.monotonic() >= deadline:
            if waiting:
                waited_ms = round(1000 * (time.monotonic() - started), 1)
                event = "lock.acquired" if got else "lock.timeout"
                log.info(
                    "%s the run lock after %sms",
                    "took" if got else "gave up on",
                    waited_ms,
                    extra={"event": event, "lock": "run", "waited_ms": waited_ms},
                )
            return bool(got)
        if not waiting:
            waiting = True
            log.info(
                "waiting up to %gs for the run lock",
                wait,
                extra={"event": "lock.wait", "lock": "run", "wait_s": wait},
            )
        time.sleep(min(0.25, max(deadline - time.monotonic(), 0.01)))


def describe_holder(conn: Conn, config: Config) -> str:
    """Who holds the run lock: application_name, backend pid, client, since when."""
    holder = lock_holder(conn, config)
    if holder is None:
        return "another session"
    since = holder.since.strftime("%Y-%m-%d %H:%M:%S %Z") if holder.since else "?"
    where = f" from {holder.client}" if holder.client else ""
    return (
        f"{holder.application_name or 'another session'} "
        f"(backend pid {holder.pid}{where}, connected since {since})" + _dead_holder_hint(holder)
    )


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


def release_run_lock(conn: Conn, config: Config) -> None:
    sqlrun.rows(
        conn,
        "SELECT pg_advisory_unlock(%(c)s, %(o)s)",
        {"c": RUN_LOCK_CLASS, "o": run_lock_key(config)},
    )
