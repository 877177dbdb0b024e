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
* ``clone``: ``clone``, ``seed``;
* ``adopt``: ``adopt`` (a database of the original multi-tenant-migrate tool);
* ``inspection``: ``status``, ``history``, ``validate``;
* ``review``: ``sql``, ``plan_sql``, ``lint``;
* ``transfer``: ``export_tenant``, ``import_tenant``;
* ``drift``: ``diff`` (each tenant schema against a reference built at its step);
* ``distribute``: ``distribute`` (a single-server fleet's schemas made Citus distributed);
* ``autogenerate``: ``new_from_models`` (``mtm new --autogenerate``), imported on use.

Names are imported on first use (PEP 562, as in ``mtm``): a read command such as
``mtm status`` loads only the modules it needs, not the code of adopt, clone, lint...
(about 0.1 s of start-up on a slow machine). Six commands share their name with the
submodule that defines them (``migrate``, ``tenants``, ``stamp``...); loading such a
submodule must not hide its command, so this module's class keeps the command.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it, relative to this package
_EXPORTS = {
    "discover": "..migrations",
    **dict.fromkeys(
        (
            "AdoptResult",
            "CloneResult",
            "CreateResult",
            "DownResult",
            "DropResult",
            "InitResult",
            "MigrateResult",
            "RotateResult",
            "SchemaStatus",
            "SeedResult",
            "StampResult",
            "StatusResult",
            "ValidateResult",
        ),
        "..results",
    ),
    "ensure_bootstrap": "..tables",
    "adopt": ".adopt",
    **dict.fromkeys(("clone", "seed"), ".clone"),
    **dict.fromkeys(("domains_add", "domains_list", "domains_remove"), ".domains"),
    "diff": ".drift",
    "distribute": ".distribute",
    **dict.fromkeys(("create_existing", "create_existing_many"), ".existing"),
    **dict.fromkeys(("history", "status", "validate"), ".inspection"),
    **dict.fromkeys(
        ("rename", "role_add", "role_remove", "tenant_overview", "tenant_page"), ".lifecycle"
    ),
    **dict.fromkeys(("down", "migrate"), ".migrate"),
    **dict.fromkeys(
        (
            "CONFIG_TEMPLATE",
            "PY_TEMPLATE",
            "SQL_TEMPLATE",
            "db_start",
            "db_status",
            "db_stop",
            "db_url",
            "init",
            "new",
        ),
        ".project",
    ),
    **dict.fromkeys(("repair", "repairs"), ".repair"),
    **dict.fromkeys(("LintResult", "lint", "plan_sql", "sql"), ".review"),
    "stamp": ".stamp",
    **dict.fromkeys(("create", "drop", "rotate_role", "tenants"), ".tenants"),
    **dict.fromkeys(("export_tenant", "import_tenant"), ".transfer"),
    **dict.fromkeys(("move_tenant", "rebalance"), ".placement"),
}


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Commands(ModuleType):
    """This package, except that a submodule named like its command (``migrate``)
    does not replace the command when the submodule is first imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and name in _EXPORTS:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Commands

if TYPE_CHECKING:
    from ..migrations import discover
    from ..results import (
        AdoptResult,
        CloneResult,
        CreateResult,
        DownResult,
        DropResult,
        InitResult,
        MigrateResult,
        RotateResult,
        SchemaStatus,
        SeedResult,
        StampResult,
        StatusResult,
        ValidateResult,
    )
    from ..tables import ensure_bootstrap
    from .adopt import adopt
    from .clone import clone, seed
    from .distribute import distribute
    from .domains import domains_add, domains_list, domains_remove
    from .drift import diff
    from .existing import create_existing, create_existing_many
    from .inspection import history, status, validate
    from .lifecycle import rename, role_add, role_remove, tenant_overview, tenant_page
    from .migrate import down, migrate
    from .placement import move_tenant, rebalance
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
    from .review import LintResult, lint, plan_sql, sql
    from .stamp import stamp
    from .tenants import create, drop, rotate_role, tenants
    from .transfer import export_tenant, import_tenant

__all__ = [
    "CONFIG_TEMPLATE",
    "PY_TEMPLATE",
    "SQL_TEMPLATE",
    "AdoptResult",
    "CloneResult",
    "CreateResult",
    "DownResult",
    "DropResult",
    "InitResult",
    "LintResult",
    "MigrateResult",
    "RotateResult",
    "SchemaStatus",
    "SeedResult",
    "StampResult",
    "StatusResult",
    "ValidateResult",
    "adopt",
    "clone",
    "create",
    "create_existing",
    "create_existing_many",
    "db_start",
    "db_status",
    "db_stop",
    "db_url",
    "diff",
    "discover",
    "distribute",
    "domains_add",
    "domains_list",
    "domains_remove",
    "down",
    "drop",
    "ensure_bootstrap",
    "export_tenant",
    "history",
    "import_tenant",
    "init",
    "lint",
    "migrate",
    "move_tenant",
    "new",
    "plan_sql",
    "rebalance",
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
    "tenant_overview",
    "tenant_page",
    "tenants",
    "validate",
]
