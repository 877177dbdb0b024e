"""What every command needs: a connection for one call, and the run's settings."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .. import citus, planner
from ..config import Config
from ..database import checkout, create_engine, direct
from ..errors import UsageError
from ..identifiers import validate_schema_name
from ..ledger import PUBLIC
from ..migrations import Namespace
from ..sqlrun import Conn
from ..tables import check

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from ..runner import Settings


@contextmanager
def session(
    config: Config, *, pool_size: int = 1, purpose: str = "mtm", upgrades: bool = False
) -> Iterator[tuple[Engine, Connection]]:
    """An engine and a connection for one command, both closed at the end. mtm's tables
    are checked first (another tool's, or of another version: refused) unless the
    command ``upgrades`` them."""
    engine = create_engine(config, pool_size=pool_size, purpose=purpose)
    try:
        with checkout(engine) as conn:
            _opened(conn, config, upgrades)
            yield engine, conn
    finally:
        engine.dispose()


@contextmanager
def reading(config: Config, *, purpose: str = "mtm") -> Iterator[Conn]:
    """``session``'s connection for a command that only reads: without SQLAlchemy where
    the URL allows (``database.direct``), mtm's tables checked the same way."""
    with direct(config, purpose=purpose) as conn:
        _opened(conn, config, upgrades=False)
        yield conn


def _opened(conn: Conn, config: Config, upgrades: bool) -> None:
    """What a command does on its new connection: mtm's tables checked (unless it
    ``upgrades`` them), and where tenants go on a Citus cluster said at ``-v``."""
    if not upgrades:
        check(conn, config)
    if citus.log.isEnabledFor(logging.INFO):
        citus.announce(citus.mode(conn, config))


def settings(
    config: Config, lock_timeout: str | None, statement_timeout: str | None, retries: int | None
) -> Settings:
    """The config's step settings with a command's overrides, checked like the file's."""
    from ..runner import Settings

    merged = Config(
        root=config.root,
        database_url=config.database_url,
        tenant_table=config.tenant_table,
        migrations_table=config.migrations_table,
        lock_timeout=lock_timeout if lock_timeout is not None else config.lock_timeout,
        statement_timeout=(
            statement_timeout if statement_timeout is not None else config.statement_timeout
        ),
        retries=retries if retries is not None else config.retries,
    )  # built only to validate the overrides the same way as the config file
    return Settings(merged.lock_timeout, merged.statement_timeout, merged.retries)


def chosen_namespace(tenants: Sequence[str] | None, all_tenants: bool, public: bool) -> Namespace:
    """The namespace of ``down``'s selectors (``--tenant ...``, ``--all-tenants``,
    ``--public``, shared by ``stamp`` and ``repair``), exactly one of them given."""
    if sum([bool(tenants), all_tenants, public]) != 1:
        raise UsageError("choose exactly one of --tenant SCHEMA, --all-tenants or --public")
    return "public" if public else "tenant"


def chosen_schemas(
    conn: Conn,
    config: Config,
    tables: Mapping[str, bool],
    tenants: Sequence[str] | None,
    public: bool,
) -> list[str]:
    """The schemas those selectors name: public, the named tenants (each checked to be
    registered), or every tenant."""
    if public:
        return [PUBLIC]
    only = [validate_schema_name(t) for t in tenants] if tenants else None
    return [s for s, _ in planner.tenant_rows(conn, config, tables, only)]
