"""``diff``: every tenant schema's real structure against a schema built at its step."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Config
from ..drift import CONNECTIONS, DiffResult, check
from ..identifiers import validate_schema_name
from ..migrations import discover
from ..tables import existing as _existing
from .base import session


def diff(config: Config, *, tenants: Sequence[str] | None = None) -> DiffResult:
    """Compare each tenant (or only ``tenants``) with a throwaway reference schema built
    at the same step from the tenant migration files; no table is locked.

    Tenants are grouped by step and catalog fingerprint; each group that differs from
    its reference is described once. The reference is dropped afterwards, also on
    failure. ``validate`` checks ledgers against files; this checks the schemas.
    """
    migrations = discover(config.migrations_directory).tenant
    only = [validate_schema_name(t) for t in tenants] if tenants else None
    with session(config, pool_size=1 + CONNECTIONS, purpose="mtm diff") as (engine, conn):
        return check(engine, conn, config, migrations, _existing(conn, config), only)
