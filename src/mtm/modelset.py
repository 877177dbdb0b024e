"""The application's SQLAlchemy models, split into mtm's two namespaces.

The config key ``models`` names one or several ``MetaData`` objects as
``module:attribute`` (``myapp.models:Base.metadata``). A table with
``schema="public"`` is public; a table with no schema is a tenant table, created in
every tenant's schema; any other schema is refused, naming the table. The tables are
copied into one ``MetaData`` of mtm's (the application's objects are never changed),
where a tenant table's foreign keys to ``public.*`` resolve.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from .config import Config
from .errors import ConfigError, UsageError
from .migrations import Namespace

PUBLIC = "public"


@dataclass(frozen=True)
class ModelSet:
    """The models, copied into one MetaData: public tables (schema ``public``) and tenant
    tables (no schema)."""

    metadata: sa.MetaData

    def tables(self, namespace: Namespace) -> list[sa.Table]:
        """The tables of ``namespace``, in dependency order."""
        wanted = PUBLIC if namespace == "public" else None
        return [t for t in self.metadata.sorted_tables if t.schema == wanted]


def specs(config: Config) -> list[str]:
    """The ``models`` entries of the config (a list, or one string, comma-separated)."""
    raw = config.models
    if raw is None:
        return []
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return [item.strip() for item in items if item.strip()]


def load(config: Config) -> ModelSet:
    """Import the configured models and split them by namespace, or say what is wrong."""
    found = specs(config)
    if not found:
        raise ConfigError(
            'no models configured: set models = "myapp.models:Base.metadata" in '
            f"{config.path or 'mtm.toml'} (or MTM_MODELS) for mtm new --autogenerate"
        )
    tables: dict[tuple[str | None, str], sa.Table] = {}
    with _importable(config.root):
        for spec in found:
            for table in _metadata(spec).tables.values():
                _check_schema(table, spec)
                key = (table.schema, table.name)
                if key in tables and tables[key] is not table:
                    raise UsageError(f"two models define table {_shown(table)} ({spec})")
                tables[key] = table
    return split(list(tables.values()))


def split(tables: list[sa.Table]) -> ModelSet:
    """Copy ``tables`` into one MetaData, refusing a public table that refers to a tenant
    table (there is one such table per tenant)."""
    metadata = sa.MetaData()
    for table in tables:
        if table.schema == PUBLIC:
            for fk in table.foreign_keys:
                target = fk.target_fullname.split(".")
                if len(target) < 3 or target[0] != PUBLIC:
                    raise UsageError(
                        f"public table {table.name} has a foreign key to {fk.target_fullname}, "
                        "which is not a public table; a public table cannot refer to one "
                        "tenant's table"
                    )
        table.to_metadata(metadata)
    return ModelSet(metadata)


def _metadata(spec: str) -> sa.MetaData:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"models entry {spec!r} is not module:attribute (e.g. myapp.models:Base.metadata)"
        )
    try:
        value: object = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"models entry {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"models entry {spec!r}: {module_name} has no {attribute}")
        value = getattr(value, part)
    if not isinstance(value, sa.MetaData):
        hint = (
            " (add .metadata)" if isinstance(getattr(value, "metadata", None), sa.MetaData) else ""
        )
        raise ConfigError(f"models entry {spec!r} is not a SQLAlchemy MetaData{hint}")
    return value


def _check_schema(table: sa.Table, spec: str) -> None:
    if table.schema not in (None, PUBLIC):
        raise UsageError(
            f"model table {_shown(table)} ({spec}) has schema {table.schema!r}: a table is "
            'public (schema="public") or a tenant table (no schema)'
        )


def _shown(table: sa.Table) -> str:
    return f"{table.schema}.{table.name}" if table.schema else table.name


@contextmanager
def _importable(root: Path) -> Iterator[None]:
    """The project's folder on ``sys.path`` while the models are imported, as when the
    application runs from it."""
    entry = str(root)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)
