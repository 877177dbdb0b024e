"""A failed step: what the database (or Python) said, in one line without secrets.

The executor turns every exception of a step into a ``StepError`` carrying the
migration at fault and the SQLSTATE, which decides what happens next: another try
(``RETRYABLE``), a new plan (``LEDGER_MOVED`` or a ledger row already there), a tenant
dropped mid-run (``GONE``), or a failure to report.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import psycopg
import sqlalchemy as sa
from psycopg import errors as pgerrors

from .config import mask_url
from .migrations import Migration
from .steps import INVALID_INDEX, LEDGER_MOVED

__all__ = ["GONE", "INVALID_INDEX", "LEDGER_MOVED", "RETRYABLE", "StepError", "describe_error"]

# SQLSTATEs worth another try: lock_not_available, deadlock_detected, serialization_failure.
RETRYABLE = {"55P03", "40P01", "40001"}
# invalid_schema_name, undefined_table: the schema (or its ledger) is gone.
GONE = {"3F000", "42P01"}


class StepError(Exception):
    """A failed step: which migration, and the database's (or Python's) words."""

    def __init__(
        self,
        migration: str | None,
        message: str,
        sqlstate: str | None = None,
        already_applied: bool = False,
    ) -> None:
        super().__init__(message)
        self.migration = migration
        self.message = message
        self.sqlstate = sqlstate
        self.already_applied = already_applied


def describe_error(exc: BaseException, migration: Migration | None = None) -> str:
    """One line (two at most) saying what went wrong, without secrets."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    if isinstance(orig, psycopg.Error):
        diag = orig.diag
        text = diag.message_primary or str(orig).strip().splitlines()[0]
        # Citus relays a worker's error as its own message, with the worker's
        # "ERROR:  " and its lines: one line, as every other error.
        parts = [" ".join(text.removeprefix("ERROR:").split())]
        if diag.message_detail:
            parts.append(f"DETAIL: {diag.message_detail}")
        if diag.message_hint:
            parts.append(f"HINT: {diag.message_hint}")
        state = f" [SQLSTATE {orig.sqlstate}]" if orig.sqlstate else ""
        return mask_url(" ".join(parts)) + state
    where = ""
    if migration is not None and migration.kind == "python":
        for frame in traceback.extract_tb(exc.__traceback__):
            if Path(frame.filename) == migration.path:
                where = f" (at {migration.path.name}:{frame.lineno})"
    return mask_url(f"{type(exc).__name__}: {exc}") + where


def sqlstate(exc: BaseException) -> str | None:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return getattr(orig, "sqlstate", None)


def is_ledger_conflict(exc: BaseException, ledger_table: str, schema: str) -> bool:
    """Whether ``exc`` is the ledger's primary key refusing a row: already applied."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    if not isinstance(orig, pgerrors.UniqueViolation):
        return False
    diag = orig.diag
    return diag.schema_name == schema and diag.table_name == ledger_table


def step_error(
    exc: BaseException, migration: Migration | None, ledger_table: str = "", schema: str = ""
) -> StepError:
    """``exc`` (from the database or from Python) as a StepError, notes included."""
    if isinstance(exc, StepError):
        return exc
    name = migration.name if migration is not None else None
    if isinstance(exc, (psycopg.Error, sa.exc.DBAPIError)):
        return StepError(
            name,
            " ".join([describe_error(exc, migration), *getattr(exc, "__notes__", ())]),
            sqlstate(exc),
            already_applied=is_ledger_conflict(exc, ledger_table, schema),
        )
    return StepError(name, describe_error(exc, migration))
