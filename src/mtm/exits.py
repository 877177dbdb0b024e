"""The exit codes of every mtm command, now and later: scripts and CI rely on them."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """What a command's exit status means."""

    OK = 0
    FAILED = 1  # a failure or findings (validate), a connection lost mid-run, db not running
    USAGE = 2  # a usage or config error, or a refusal before anything changed
    PENDING = 3  # status --check found pending work
    UNREACHABLE = 4  # the first connection to the database failed
    INTERRUPTED = 130  # Ctrl-C (SIGINT): running steps finished, nothing new started
