"""Errors mtm reports to people: each carries one clear message and an exit code.

Anything raised as an ``MtmError`` is an expected failure (bad input, a held lock, a
failed migration); the command line prints its message on one line and exits with its
code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .exits import Exit


class MtmError(Exception):
    """An expected failure with a message meant for the person running mtm."""

    exit_code: int = Exit.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(MtmError):
    """The configuration file or environment is wrong."""

    exit_code = Exit.USAGE


class UsageError(MtmError):
    """A command called with options that do not fit together."""

    exit_code = Exit.USAGE


class InvalidName(MtmError):
    """A schema name or domain that mtm refuses to put anywhere near SQL."""

    exit_code = Exit.USAGE


class MigrationFileError(MtmError):
    """A migration file that cannot be read, loaded or placed in a namespace."""

    exit_code = Exit.USAGE


class DatabaseUnavailable(MtmError):
    """The database cannot be reached (a connection lost mid-run is a failure instead)."""

    exit_code = Exit.UNREACHABLE


class LockHeld(MtmError):
    """Another mtm run holds the migration lock."""

    exit_code = Exit.USAGE  # refused before anything changed


class PublicMigrationsLocked(LockHeld):
    """A create found public migrations pending while another run holds the run lock:
    a refusal before anything changed."""

    exit_code = Exit.USAGE


class TenantError(MtmError):
    """A tenant operation refused: unknown tenant, existing schema, domain taken..."""

    exit_code = Exit.USAGE  # refused before anything changed


class InsufficientPrivilege(MtmError):
    """The role mtm connects as lacks a privilege; raised before anything changed."""

    exit_code = Exit.USAGE


class ValidationFailed(MtmError):
    """Applied migrations disagree with the files (edited, missing, out of order)."""

    exit_code = Exit.USAGE  # refused before anything changed


_SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501"
_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")


def insufficient_privilege(exc: BaseException) -> InsufficientPrivilege | None:
    """The one-line form of a server's "permission denied" found in ``exc``'s chain.

    The server names the object ("permission denied for table tenants"); the statement
    that failed says which privilege was needed. Without importing a driver: any error
    in the chain with SQLSTATE 42501 counts.
    """
    statement: str | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        statement = statement or getattr(current, "statement", None)
        if getattr(current, "sqlstate", None) == _SQLSTATE_INSUFFICIENT_PRIVILEGE:
            diag = getattr(current, "diag", None)
            primary = getattr(diag, "message_primary", None) or str(current).splitlines()[0]
            return InsufficientPrivilege(_privilege_message(primary.strip(), statement))
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def _privilege_message(primary: str, statement: str | None) -> str:
    words = (statement or "").split(None, 1)
    verb = words[0].upper() if words else ""
    if " for schema " in primary:
        needed = "CREATE" if verb == "CREATE" else "USAGE"
    elif verb in _TABLE_PRIVILEGES and " for " in primary:
        needed = verb
    else:
        return (
            f"{primary}: the role mtm connects as lacks that privilege; nothing was "
            "changed (grant it, or run mtm as the owner of mtm's tables)"
        )
    what = primary.split(" for ", 1)[1]
    kind, _, name = what.partition(" ")
    # The server names a table without its schema; the statement may say which one.
    qualified = set(re.findall(rf'"?(\w+)"?\."?{re.escape(name)}\b', statement or ""))
    if kind == "table" and len(qualified) == 1:
        what = f"table {qualified.pop()}.{name}"
    return (
        f"{primary}: the role mtm connects as needs {needed} on {what}; nothing was "
        "changed (grant it, or run mtm as the owner of mtm's tables)"
    )


class TablesRefused(MtmError):
    """mtm's own tables are not usable as they are: made by another tool, or of another
    version than this mtm's. Raised before anything changes."""

    exit_code = Exit.USAGE


def made_by_another_tool(tables: Sequence[tuple[str, str]], keys: Sequence[str]) -> TablesRefused:
    """The refusal of tables that carry mtm's names but not its shapes: ``tables`` are
    (quoted name, what mtm would have it be), ``keys`` the config keys that rename them."""
    named = ", ".join(f"{ref} (not mtm's {what})" for ref, what in tables)
    one = len(tables) == 1
    return TablesRefused(
        f"{'table' if one else 'tables'} {named} {'was' if one else 'were'} made by another "
        "tool; nothing was changed. Take a database of the original multi-tenant-migrate "
        "over with 'mtm adopt'; for another tool's, point "
        f"{' / '.join(sorted(set(keys)))} in the config at names no other tool uses"
    )


def adoption_unfinished() -> TablesRefused:
    """The refusal of every command but ``adopt`` while an adoption is unfinished."""
    return TablesRefused(
        "the adoption of this database (mtm adopt) is unfinished: run 'mtm adopt' again "
        "to complete it; nothing was changed"
    )
