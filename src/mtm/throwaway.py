"""A throwaway database on the configured server, removed however its user ends.

``mtm new --autogenerate`` needs the schema every migration builds, public and
tenant, without touching the real ones: a database of its own is the only place where
the public migrations can run as written (they may name ``public.x``, and tenant
migrations may refer to ``public.plans``) without a real public table changing. It is
created from the server's default template, used through its own ``Config`` (so that
mtm's normal ``migrate`` and ``create`` build it), and dropped with ``WITH (FORCE)``
in a ``finally``: after success, a failed migration, an error or Ctrl-C. Only a
process killed outright (SIGKILL, power loss) leaves one behind, and the next command
that makes a throwaway database drops it, once it can prove the database is a
leftover: its name starts with ``mtm_autogen_``, its comment is ``marker`` of the
database the command runs against, and no live session holds the advisory lock on its
name (``locks.THROWAWAY_LOCK_CLASS``), which the command that made it holds in that
database from before it is created until it is dropped. On a Citus coordinator it
gets the Citus extension too (a single node: Citus's functions, no workers), for the
public migrations that call them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import sqlalchemy as sa

from . import clustercheck
from .config import Config, sqlalchemy_url
from .database import checkout, create_engine, resolve_url
from .errors import InsufficientPrivilege, MtmError
from .identifiers import quote_ident, quote_literal
from .locks import THROWAWAY_LOCK_CLASS
from .tables import ensure_bootstrap

PREFIX = "mtm_autogen_"
log = logging.getLogger("mtm.autogenerate")


def marker(origin: str) -> str:
    """The comment of a throwaway database made by a command run against ``origin``."""
    return f"mtm throwaway database of {origin}: dropped when its command ends, or by the next"


def _lock_key(name: str) -> str:
    return f"{THROWAWAY_LOCK_CLASS}, hashtext({quote_literal(name)})"


@contextmanager
def database(config: Config) -> Iterator[Config]:
    """A new empty database on ``config``'s server, as a Config pointing at it; dropped
    when the block ends, however it ends. Leftovers of killed commands go first."""
    name = PREFIX + uuid.uuid4().hex[:16]
    url = sqlalchemy_url(resolve_url(config))
    engine = create_engine(config, pool_size=1, purpose="mtm autogenerate")
    try:
        with checkout(engine) as holder:  # holds the lock on the name throughout
            remove_leftovers(holder)
            holder.exec_driver_sql(f"SELECT pg_advisory_lock({_lock_key(name)})")
            try:
                citus = clustercheck.is_citus(holder)
                _create(holder, name)
                made = replace(
                    config,
                    database_url=url.set(database=name).render_as_string(hide_password=False),
                )
                if citus:  # public migrations may call create_reference_table
                    clustercheck.add_citus(made)
                log.info(
                    "created throwaway database %s",
                    name,
                    extra={"event": "throwaway.create", "database": name},
                )
                yield made
            finally:  # a fresh connection: an interrupt may have left this one unusable
                with checkout(engine) as conn:
                    drop(conn, name)
    finally:
        engine.dispose()


def remove_leftovers(conn: sa.Connection) -> list[str]:
    """Drop the throwaway databases that killed commands against this database left
    behind (name, comment, and a lock nobody holds); their names."""
    origin = conn.exec_driver_sql("SELECT current_database()").scalar_one()
    found = conn.execute(
        sa.text(
            "SELECT datname FROM pg_database WHERE datname LIKE :pattern "
            "AND shobj_description(oid, 'pg_database') = :marker ORDER BY datname"
        ),
        {"pattern": PREFIX.replace("_", "\\_") + "%", "marker": marker(origin)},
    ).scalars()
    removed: list[str] = []
    for name in list(found):
        key = _lock_key(name)
        if not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar_one():
            continue  # its command still runs (or its session has not ended yet)
        try:
            drop(conn, name)
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
        removed.append(name)
        log.warning(
            "dropped %s, a throwaway database left behind by a command that was killed",
            name,
            extra={"event": "throwaway.leftover", "database": name},
        )
    return removed


def _create(conn: sa.Connection, name: str) -> None:
    origin = conn.exec_driver_sql("SELECT current_database()").scalar_one()
    try:
        conn.exec_driver_sql(f"CREATE DATABASE {quote_ident(name)}")
        conn.exec_driver_sql(
            f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(marker(origin))}"
        )
    except sa.exc.ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) == "42501":
            user = conn.exec_driver_sql("SELECT current_user").scalar()
            raise InsufficientPrivilege(
                f"mtm new --autogenerate builds the migrations in a throwaway database and "
                f"role {user} may not create one: ALTER ROLE {user} CREATEDB, or run it "
                "against a development server"
            ) from None
        raise


def drop(conn: sa.Connection, name: str) -> None:
    """Drop the throwaway database, closing any session still in it."""
    try:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    except sa.exc.DBAPIError as exc:
        raise MtmError(
            f"could not drop the throwaway database {name}: {exc.orig}; drop it by hand"
        ) from None
    log.info(
        "dropped throwaway database %s", name, extra={"event": "throwaway.drop", "database": name}
    )


def mtm_tables(config: Config) -> set[str]:
    """Create mtm's own tables in the throwaway database of ``config`` and name them: the
    public tables that are mtm's, whatever this version of mtm has, and never compared."""
    bootstrap_engine = create_engine(config, pool_size=1, purpose="mtm autogenerate")
    try:
        with checkout(bootstrap_engine) as conn:
            ensure_bootstrap(conn, config)
            return set(sa.inspect(conn).get_table_names(schema="public"))
    finally:
        bootstrap_engine.dispose()


def engine(config: Config, *search_path: str) -> sa.Engine:
    """An engine on the throwaway database whose sessions see ``search_path`` only, so
    that SQLAlchemy's default schema, which Alembic compares, is its first schema."""
    path = ",".join(quote_ident(s) for s in search_path)
    url = sqlalchemy_url(resolve_url(config))
    return sa.create_engine(
        url,
        poolclass=sa.NullPool,
        connect_args={
            "application_name": "mtm autogenerate",
            "options": f"-c search_path={path} -c standard_conforming_strings=on",
        },
    )
