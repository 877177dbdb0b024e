"""Commands about the project itself: ``init``, ``new`` and the embedded database."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from .. import database
from ..config import CONFIG_FILE, Config
from ..embedded import EmbeddedServer, EmbeddedStatus
from ..errors import ConfigError, UsageError
from ..keys import init_template
from ..results import InitResult

# --- init and new ----------------------------------------------------------------------

CONFIG_TEMPLATE = init_template()  # every key, its help and default: keys.py


def init(directory: str | Path = ".") -> InitResult:
    """Write a commented mtm.toml and the migrations folders; never overwrite a config."""
    root = Path(directory).resolve()
    config_path = root / CONFIG_FILE
    if config_path.exists():
        raise ConfigError(f"{config_path} already exists; mtm init does not overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    created = [config_path]
    config_path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
    for ns in ("public", "tenant"):
        folder = root / "migrations" / ns
        if not folder.exists():
            folder.mkdir(parents=True)
            created.append(folder)
    gitignore = root / ".mtm" / ".gitignore"
    gitignore.parent.mkdir(exist_ok=True)
    gitignore.write_text("*\n", encoding="utf-8")
    return InitResult(config_path, created)


PY_TEMPLATE = '''"""{message}"""

import sqlalchemy as sa  # noqa: F401


def up(op):
    pass


def down(op):
    pass
'''

SQL_TEMPLATE = """-- {message}

-- mtm:down
"""


def new(
    config: Config, namespace: str, message: str, *, sql: bool = False, now: datetime | None = None
) -> Path:
    """Write a new migration file named with a UTC timestamp and a slug of the message."""
    path = migration_path(config, namespace, message, ".sql" if sql else ".py", now)
    template = SQL_TEMPLATE if sql else PY_TEMPLATE
    path.write_text(template.format(message=message.replace('"""', "'''")), encoding="utf-8")
    return path


def migration_path(
    config: Config, namespace: str, message: str, ext: str, now: datetime | None = None
) -> Path:
    """Where a new migration goes (its folder created): named with a UTC timestamp and a
    slug of the message, in the layout the migrations folder already uses."""
    if namespace not in ("public", "tenant"):
        raise UsageError(f"namespace must be public or tenant, got {namespace!r}")
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:60]
    if not slug:
        raise UsageError("the message must contain letters or digits")
    directory = config.migrations_directory
    if not directory.is_dir():
        raise ConfigError(f"migrations directory {directory} does not exist (run 'mtm init')")
    moment = now or datetime.now(UTC)
    flat = not (directory / namespace).is_dir() and any(
        p.name.startswith(("public:", "tenant:")) for p in directory.iterdir()
    )
    if flat:  # the original tool's layout: tenant:1546110701000-message.py
        stamp = str(int(moment.timestamp() * 1000))
        path = directory / f"{namespace}:{stamp}-{slug.replace('_', '-')}{ext}"
    else:
        (directory / namespace).mkdir(exist_ok=True)
        path = directory / namespace / f"{moment.strftime('%Y%m%d%H%M%S')}_{slug}{ext}"
    if path.exists():
        raise UsageError(f"{path} already exists")
    return path


# --- the embedded database ---------------------------------------------------------------


def db_start(config: Config) -> str:
    _refuse_configured(config)
    return EmbeddedServer(config.embedded_data_dir).start()


def db_stop(config: Config) -> bool:
    _refuse_configured(config)
    return EmbeddedServer(config.embedded_data_dir).stop()


def db_status(config: Config) -> EmbeddedStatus:
    return EmbeddedServer(config.embedded_data_dir).status()


def db_url(config: Config) -> str:
    """The URL mtm uses: the configured one, or the embedded server's (started)."""
    return database.resolve_url(config)


def _refuse_configured(config: Config) -> None:
    if config.database_url:
        raise UsageError(
            "a database is configured (database_url or MTM_DATABASE_URL); "
            "mtm db manages only the embedded one"
        )
