"""One plain function per command. The CLI only parses options, calls these and renders.

Each takes a ``Config`` first and returns a result object (``mtm.results``);
applications and deploy scripts call them directly (``mtm.migrate(config)``). Expected
failures raise ``MtmError`` subclasses with one clear message. Commands run no SQL
themselves: they compose the modules that own each table and idea (``registry``,
``ledger``, ``planner``, ``runner``, ``fleet``, ``locks``...). By area:

* ``project``: ``init``, ``new``, the embedded database (``db_*``);
* ``tenants``: ``create``, ``tenants``, ``drop``, ``rotate_role``;
* ``lifecycle``: ``rename``, ``role_add``, ``role_remove``, ``tenant_overview``;
* ``domains``: ``domains_add``, ``domains_remove``, ``domains_list``;
* ``migrate``: ``migrate``, ``down``;
* ``stamp``: ``stamp``;
* ``existing``: ``create_existing``, ``create_existing_many`` (``create --existing``);
* ``repair``: ``repair``, ``repairs`` (the audit);
* ``inspection``: ``status``, ``history``, ``validate``;
* ``drift``: ``diff`` (each tenant schema against a reference built at its step).
"""

from __future__ import annotations

from ..migrations import discover
from ..results import (
    CreateResult,
    DownResult,
    DropResult,
    InitResult,
    MigrateResult,
    RotateResult,
    SchemaStatus,
    StampResult,
    StatusResult,
    ValidateResult,
)
from ..tables import ensure_bootstrap
from .domains import domains_add, domains_list, domains_remove
from .drift import diff
from .existing import create_existing, create_existing_many
from .inspection import history, status, validate
from .lifecycle import rename, role_add, role_remove, tenant_overview
from .migrate import down, migrate
from .project import (
    CONFIG_TEMPLATE,
    PY_TEMPLATE,
    SQL_TEMPLATE,
    db_start,
    db_status,
    db_stop,
    db_url,
    init,
    new,
)
from .repair import repair, repairs
from .stamp import stamp
from .tenants import create, drop, rotate_role, tenants

__all__ = [
    "CONFIG_TEMPLATE",
    "PY_TEMPLATE",
    "SQL_TEMPLATE",
    "CreateResult",
    "DownResult",
    "DropResult",
    "InitResult",
    "MigrateResult",
    "RotateResult",
    "SchemaStatus",
    "StampResult",
    "StatusResult",
    "ValidateResult",
    "create",
    "create_existing",
    "create_existing_many",
    "db_start",
    "db_status",
    "db_stop",
    "db_url",
    "diff",
    "discover",
    "domains_add",
    "domains_list",
    "domains_remove",
    "down",
    "drop",
    "ensure_bootstrap",
    "history",
    "init",
    "migrate",
    "new",
    "rename",
    "repair",
    "repairs",
    "role_add",
    "role_remove",
    "rotate_role",
    "stamp",
    "status",
    "tenant_overview",
    "tenants",
    "validate",
]
