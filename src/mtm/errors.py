"""Errors mtm reports to people: each carries one clear message and an exit code.

Anything raised as an ``MtmError`` is an expected failure (bad input, a held lock, a
failed migration); the command line prints its message on one line and exits with its
code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class MtmError(Exception):
    """An expected failure with a message meant for the person running mtm."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(MtmError):
    """The configuration file or environment is wrong."""

    exit_code = 2


class UsageError(MtmError):
    """A command called with options that do not fit together."""

    exit_code = 2


class InvalidName(MtmError):
    """A schema name or domain that mtm refuses to put anywhere near SQL."""

    exit_code = 2


class MigrationFileError(MtmError):
    """A migration file that cannot be read, loaded or placed in a namespace."""

    exit_code = 2


class DatabaseUnavailable(MtmError):
    """The database cannot be reached."""


class LockHeld(MtmError):
    """Another mtm run holds the migration lock."""


class PublicMigrationsLocked(LockHeld):
    """A create found public migrations pending while another run holds the run lock:
    a refusal before anything changed."""

    exit_code = 2


class TenantError(MtmError):
    """A tenant operation refused: unknown tenant, existing schema, domain taken..."""


class ValidationFailed(MtmError):
    """Applied migrations disagree with the files (edited, missing, out of order)."""


class TablesRefused(MtmError):
    """mtm's own tables are not usable as they are: made by another tool, or of another
    version than this mtm's. Raised before anything changes."""

    exit_code = 2


def made_by_another_tool(tables: Sequence[tuple[str, str]], keys: Sequence[str]) -> TablesRefused:
    """The refusal of tables that carry mtm's names but not its shapes: ``tables`` are
    (quoted name, what mtm would have it be), ``keys`` the config keys that rename them."""
    named = ", ".join(f"{ref} (not mtm's {what})" for ref, what in tables)
    one = len(tables) == 1
    return TablesRefused(
        f"{'table' if one else 'tables'} {named} {'was' if one else 'were'} made by another "
        "tool; nothing was changed. Taking such a database over is planned as 'mtm adopt'; "
        f"until then point {' / '.join(sorted(set(keys)))} in the config at names no other "
        "tool uses"
    )
