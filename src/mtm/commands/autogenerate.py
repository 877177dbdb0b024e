"""``mtm new (public|tenant) MSG --autogenerate``: a migration written from the models.

The steps: check the message and the models (before anything is built), build a
throwaway database at head with mtm's own ``create`` (public migrations, then a tenant
schema with every tenant migration), compare it with the models through Alembic
(``autogenerate``), drop the database, and write the migration only if there is
something to change.
"""

from __future__ import annotations

from datetime import datetime

from .. import autogenerate, modelset, throwaway
from ..config import Config
from ..errors import MtmError, UsageError
from ..migrations import Namespace, discover
from ..results import AutogenerateResult
from .project import migration_path
from .tenants import create


def new_from_models(
    config: Config, namespace: str, message: str, *, now: datetime | None = None
) -> AutogenerateResult:
    """Write the migration that brings ``namespace``'s schemas from head to the models,
    or nothing when there is nothing to change (see ``AutogenerateResult``)."""
    if namespace not in ("public", "tenant"):
        raise UsageError(f"namespace must be public or tenant, got {namespace!r}")
    ns: Namespace = "public" if namespace == "public" else "tenant"
    path = migration_path(config, ns, message, ".py", now)
    models = modelset.load(config)
    migrations = discover(config.migrations_directory)
    migrations.load_all()
    with throwaway.database(config) as scratch:
        ours = throwaway.mtm_tables(scratch)  # before any migration: mtm's alone
        try:
            create(scratch, autogenerate.TENANT_SCHEMA, migrations=migrations)
        except MtmError as exc:
            raise MtmError(
                f"the migrations could not be applied in a throwaway database: {exc.message}"
            ) from None
        comparison = autogenerate.compare(scratch, ns, models, ours)
    if comparison.empty:
        return AutogenerateResult(ns, None, comparison.warnings)
    path.write_text(comparison.text(message), encoding="utf-8")
    return AutogenerateResult(ns, path, comparison.warnings)
