"""mtm: schema-per-tenant PostgreSQL migrations.

The Python API mirrors the command line: ``mtm.migrate(config)``, ``mtm.status(config)``,
... each take a ``Config`` (``mtm.Config.load()``) and return a result object.
Applications use ``TenantResolver`` (cached; ``MapperTable`` is the uncached lookup) to
find a tenant by host name, ``TenantMiddleware``/``WSGITenantMiddleware`` to do it per
request, and ``tenant_connection``/``tenant_session`` (and their ``async_`` forms) to
work inside its schema; see docs/applications.md.

Names are imported on first use (PEP 562), so ``import mtm`` (and ``mtm --help``) does
not load SQLAlchemy, psycopg or Alembic until something needs them. The library logs
under the ``mtm`` logger and adds only a ``NullHandler``: applications configure output.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

logging.getLogger("mtm").addHandler(logging.NullHandler())

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(
        (
            "clone",
            "adopt",
            "create",
            "create_existing",
            "create_existing_many",
            "db_start",
            "db_status",
            "db_stop",
            "db_url",
            "diff",
            "domains_add",
            "domains_list",
            "domains_remove",
            "down",
            "drop",
            "export_tenant",
            "history",
            "import_tenant",
            "init",
            "lint",
            "migrate",
            "new",
            "rename",
            "role_add",
            "role_remove",
            "repair",
            "repairs",
            "rotate_role",
            "seed",
            "sql",
            "stamp",
            "status",
            "tenant_overview",
            "tenants",
            "validate",
        ),
        "commands",
    ),
    "Config": "config",
    "Database": "database",
    "connect": "database",
    "MtmError": "errors",
    "tenant_role_name": "identifiers",
    "TenantMiddleware": "middleware",
    "WSGITenantMiddleware": "middleware",
    "current_tenant": "middleware",
    "MapperTable": "registry",
    "Tenant": "registry",
    "AsyncTenantResolver": "resolver",
    "TenantCache": "resolver",
    "TenantResolver": "resolver",
    **dict.fromkeys(
        (
            "async_tenant_connection",
            "async_tenant_session",
            "bind_connection",
            "create_app_engine",
            "create_async_app_engine",
            "tenant_connection",
            "tenant_role",
            "tenant_session",
        ),
        "session",
    ),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mtm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .commands.adopt import adopt
    from .commands.clone import clone, seed
    from .commands.domains import domains_add, domains_list, domains_remove
    from .commands.drift import diff
    from .commands.existing import create_existing, create_existing_many
    from .commands.inspection import history, status, validate
    from .commands.lifecycle import rename, role_add, role_remove, tenant_overview
    from .commands.migrate import down, migrate
    from .commands.project import db_start, db_status, db_stop, db_url, init, new
    from .commands.repair import repair, repairs
    from .commands.review import lint, sql
    from .commands.stamp import stamp
    from .commands.tenants import create, drop, rotate_role, tenants
    from .commands.transfer import export_tenant, import_tenant
    from .config import Config
    from .database import Database, connect
    from .errors import MtmError
    from .identifiers import tenant_role_name
    from .middleware import TenantMiddleware, WSGITenantMiddleware, current_tenant
    from .registry import MapperTable, Tenant
    from .resolver import AsyncTenantResolver, TenantCache, TenantResolver
    from .session import (
        async_tenant_connection,
        async_tenant_session,
        bind_connection,
        create_app_engine,
        create_async_app_engine,
        tenant_connection,
        tenant_role,
        tenant_session,
    )

__all__ = [
    "AsyncTenantResolver",
    "Config",
    "Database",
    "MapperTable",
    "MtmError",
    "Tenant",
    "TenantCache",
    "TenantMiddleware",
    "TenantResolver",
    "WSGITenantMiddleware",
    "adopt",
    "async_tenant_connection",
    "async_tenant_session",
    "bind_connection",
    "clone",
    "connect",
    "create",
    "create_app_engine",
    "create_async_app_engine",
    "create_existing",
    "create_existing_many",
    "current_tenant",
    "db_start",
    "db_status",
    "db_stop",
    "db_url",
    "diff",
    "domains_add",
    "domains_list",
    "domains_remove",
    "down",
    "drop",
    "export_tenant",
    "history",
    "import_tenant",
    "init",
    "lint",
    "migrate",
    "new",
    "rename",
    "repair",
    "repairs",
    "role_add",
    "role_remove",
    "rotate_role",
    "seed",
    "sql",
    "stamp",
    "status",
    "tenant_connection",
    "tenant_overview",
    "tenant_role",
    "tenant_role_name",
    "tenant_session",
    "tenants",
    "validate",
]
