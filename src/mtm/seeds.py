"""Seeds: the data a new tenant starts with, from the config key ``seed``.

A seed is a SQL file (``seed = "seeds/tenant.sql"``, relative to the config file) or a
Python function (``seed = "myapp.seeds:seed"``, ``def seed(conn, tenant)``). It runs in
the create's transaction after the tenant migrations, with ``search_path`` set to the
tenant's schema alone, so a failing seed leaves no tenant behind; ``mtm seed TENANT``
runs it again in a transaction of its own under the schema's lock. A Python seed gets
the SQLAlchemy ``Connection`` a Python migration's ``op.get_bind()`` returns (inside
mtm's transaction: it must not commit) and the ``mtm.Tenant`` (schema, name, domains;
during a create its timestamps are None). Seeds are data for new
tenants only: never replayed by ``migrate``, never run by ``clone``.
"""

from __future__ import annotations

import codecs
import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import Connection

from . import steps
from .config import Config
from .database import rollback_quietly, run_script
from .errors import ConfigError
from .migrations import _check_script
from .registry import Tenant
from .sqlrun import driver
from .txguard import transaction_kept

_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")

SeedFunction = Callable[[Connection, Tenant], Any]


@dataclass(frozen=True)
class Seed:
    """A loaded seed: SQL text, or a Python function."""

    spec: str
    sql: str | None = None
    function: SeedFunction | None = None

    def run(self, conn: Connection, tenant: Tenant) -> None:
        """Run inside a transaction mtm opened on ``conn`` (search_path set); raise on
        failure, leaving the rollback to the caller."""
        if self.sql is not None:
            run_script(conn, [self.sql])
            return
        assert self.function is not None
        status = psycopg.pq.TransactionStatus
        with transaction_kept(conn):
            self.function(conn, tenant)
        if driver(conn).info.transaction_status != status.INTRANS:
            raise RuntimeError(
                f"seed {self.spec} ended mtm's transaction itself (COMMIT or ROLLBACK)"
            )


def load(config: Config) -> Seed | None:
    """The configured seed, read and checked now (so that a bad one changes nothing), or
    None without one."""
    spec = getattr(config, "seed", None)
    if not spec:
        return None
    source = str(config.path) if config.path else "config"
    if spec.endswith(".sql"):
        return Seed(spec, sql=_read_sql(config.root / spec, source))
    if not _FUNCTION.fullmatch(spec):
        raise ConfigError(
            f"{source}: seed {spec!r} is neither a .sql file (seeds/tenant.sql) nor a "
            "Python function (myapp.seeds:seed)"
        )
    return Seed(spec, function=_import(spec, config.root, source))


def _read_sql(path: Path, source: str) -> str:
    try:
        data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as exc:
        raise ConfigError(f"{source}: seed file {path} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: seed file {path} is not UTF-8 text") from None
    # Refused as a migration's would be: syntax errors, COMMIT, CREATE INDEX CONCURRENTLY.
    if not _check_script(path, text, "seed", 1, True):
        raise ConfigError(f"{source}: seed file {path} holds no SQL statement")
    return text


def _import(spec: str, root: Path, source: str) -> SeedFunction:
    """``module:function``, importable from the config file's folder or ``sys.path``."""
    module_name, _, name = spec.partition(":")
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"{source}: seed {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        if added:
            sys.path.remove(str(root))
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"{source}: seed {spec!r}: {module_name} has no function {name}")
    seed: SeedFunction = function
    return seed


def reseed(
    conn: Connection, config: Config, seed: Seed, tenant: Tenant, timeouts: steps.Timeouts
) -> None:
    """Run ``seed`` again for an existing tenant: one transaction under its schema's lock,
    rolled back whole if the seed fails."""
    framed = steps.frame(config, tenant.schema, "tenant", timeouts=timeouts, state=None)
    try:
        run_script(conn, framed.head)
        seed.run(conn, tenant)
        run_script(conn, framed.tail)
    except BaseException:
        rollback_quietly(conn)
        raise
