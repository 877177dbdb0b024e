"""mtm: schema-per-tenant PostgreSQL migrations.

The Python API mirrors the command line: ``mtm.migrate(config)``, ``mtm.status(config)``,
... each take a ``Config`` (``mtm.Config.load()``) and return a result object.
Applications use ``TenantResolver`` (cached; ``MapperTable`` is the uncached lookup) to
find a tenant by host name, ``TenantMiddleware``/``WSGITenantMiddleware`` to do it per
request, and ``tenant_connection``/``tenant_session`` (and their ``async_`` forms) to
work inside its schema; see docs/applications.md.
"""

from __future__ import annotations

from .commands import (
    create,
    db_start,
    db_status,
    db_stop,
    db_url,
    down,
    drop,
    history,
    init,
    migrate,
    new,
    rotate_role,
    status,
    tenants,
    validate,
)
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
    "async_tenant_connection",
    "async_tenant_session",
    "bind_connection",
    "connect",
    "create",
    "create_app_engine",
    "create_async_app_engine",
    "current_tenant",
    "db_start",
    "db_status",
    "db_stop",
    "db_url",
    "down",
    "drop",
    "history",
    "init",
    "migrate",
    "new",
    "rotate_role",
    "status",
    "tenant_connection",
    "tenant_role",
    "tenant_role_name",
    "tenant_session",
    "tenants",
    "validate",
]
