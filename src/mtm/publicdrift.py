"""Drift of the public schema: its real structure against the public migrations' own.

A tenant's reference is a throwaway schema beside the tenants, but public's cannot be:
public migrations may name ``public.x`` (and extensions put objects in public), so run
anywhere in the same database they would change the real public schema. The reference
is therefore the public schema of a throwaway database (``throwaway``: needs a role
allowed to CREATE DATABASE, and costs one) where mtm bootstraps its own tables and
migrates public to the step the real ledger is at. Both are fingerprinted and, if they
differ, described and compared (``catalog``), without mtm's own tables (registry,
ledger, state...), which hold rows, not the project's structure.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from . import catalog
from .schemacatalog import Difference

PUBLIC = "public"
NOT_ASKED = (
    "public schema not compared: its reference needs a throwaway database (CREATE "
    "DATABASE); run 'mtm diff --public' to compare it too"
)


@dataclass(frozen=True)
class PublicDrift:
    """The public schema at ``step`` against a reference built at that step, or why it
    was not compared (``problem``)."""

    step: int = 0
    migration: str | None = None  # the last public migration applied
    differences: tuple[Difference, ...] = ()
    problem: str | None = None

    @property
    def clean(self) -> bool:
        return not self.differences and self.problem is None


def differences(
    real: Connection, reference: Connection, exclude: Collection[str]
) -> tuple[Difference, ...]:
    """What differs between the public schema on ``real`` and on ``reference`` (nothing
    when their fingerprints agree), ``exclude`` tables left out on both."""
    mine = catalog.fingerprints(real, [PUBLIC], exclude=exclude)
    built = catalog.fingerprints(reference, [PUBLIC], exclude=exclude)
    if mine == built:
        return ()
    expected = catalog.describe(reference, PUBLIC, exclude=exclude)
    actual = catalog.describe(real, PUBLIC, exclude=exclude)
    return tuple(catalog.compare(expected, actual))
