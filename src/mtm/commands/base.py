"""What every command needs: a connection for one call, and the run's settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine

from ..config import Config
from ..database import checkout, create_engine
from ..runner import Settings
from ..tables import check


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
            if not upgrades:
                check(conn, config)
            yield engine, conn
    finally:
        engine.dispose()


def settings(
    config: Config, lock_timeout: str | None, statement_timeout: str | None, retries: int | None
) -> Settings:
    """The config's step settings with a command's overrides, checked like the file's."""
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
