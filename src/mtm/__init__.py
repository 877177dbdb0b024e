"""mtm: schema-per-tenant PostgreSQL migrations.

The Python API mirrors the command line: ``mtm.migrate(config)``, ``mtm.status(config)``,
... each take a ``Config`` (``mtm.Config.load()``) and return a result object.
Applications use ``MapperTable`` to find a tenant by host name and ``tenant_connection``
to work inside its schema.
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
    status,
    tenants,
    validate,
)
from .config import Config
from .errors import MtmError
from .registry import MapperTable, Tenant
from .session import tenant_connection

__all__ = [
    "Config",
    "MapperTable",
    "MtmError",
    "Tenant",
    "create",
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
    "status",
    "tenant_connection",
    "tenants",
    "validate",
]
