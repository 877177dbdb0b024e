"""The configuration keys: each one's name, type, default and help, declared once.

The loader (``config.py``), the ``mtm init`` template, the CLI's option help and the
README's table all come from ``KEYS``; a test checks the README against it. Every key
can also be given as the environment variable ``MTM_<KEY>`` (``MTM_JOBS=8``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "MTM_"


@dataclass(frozen=True)
class Key:
    """One configuration key."""

    name: str
    type: type
    default: Any
    help: str
    legacy: str | None = None  # the original tool's camelCase JSON key
    secret: bool = False  # its value is never shown in a message
    example: Any = None  # shown, commented out, in the mtm init template
    many: bool = False  # a list of values of ``type`` is accepted too

    @property
    def env(self) -> str:
        """The environment variable that sets this key."""
        return ENV_PREFIX + self.name.upper()


# The five db_* parts compose a URL when database_url is absent.
KEYS: tuple[Key, ...] = (
    Key(
        "database_url",
        str,
        None,
        "the database (percent-encode @ : / % and spaces in user and password); with neither "
        "it nor the db_* keys, an embedded PostgreSQL",
        secret=True,
        example="postgresql://app:secret@localhost:5432/app",
    ),
    Key("db_user", str, None, "the URL in parts: user", "dbUser", example="app"),
    Key("db_password", str, None, "the URL in parts: password", "dbPassword", True, "secret"),
    Key("db_name", str, None, "the URL in parts: database name", "dbName", example="app"),
    Key(
        "db_host",
        str,
        None,
        "the URL in parts: host (default localhost)",
        "dbHost",
        example="localhost",
    ),
    Key("db_port", int, None, "the URL in parts: port", "dbPort", example=5432),
    Key(
        "tenant_table",
        str,
        "tenants",
        "the registry table in public (<tenant_table>_domains beside it)",
        "tenantMapperTableName",
    ),
    Key(
        "public_schema_display_name",
        str,
        "*PUBLIC",
        "how the public schema is shown in status tables",
        "publicSchemaDisplayName",
    ),
    Key(
        "migrations_directory",
        str,
        "migrations",
        "the folder of public/ and tenant/ migrations, relative to the config file",
        "migrationsDirectory",
    ),
    Key(
        "migrations_table",
        str,
        "mtm_migrations",
        "the ledger table of applied migrations, one in every schema",
        "migrationsTableName",
    ),
    Key(
        "jobs",
        int,
        4,
        "tenants migrated at once, each on its own connection (why 4: docs/performance.md)",
    ),
    Key(
        "lock_timeout",
        str,
        "5s",
        "per migration: give up waiting for a lock after this long, then retry",
    ),
    Key("retries", int, 2, "retries of a step that hit a lock timeout or deadlock"),
    Key(
        "statement_timeout",
        str,
        None,
        "per migration, if set: the longest a statement may run",
        example="5min",
    ),
    Key(
        "tenant_role_prefix",
        str,
        "mtm_tenant_",
        "the name prefix of the roles mtm create --role makes (docs/applications.md)",
    ),
    Key(
        "tenant_role_member",
        str,
        None,
        "the application's login role: granted each new tenant role (a safety net, not "
        "a boundary) and read access to the registry",
        example="app",
    ),
    Key(
        "seed",
        str,
        None,
        "data for new tenants, run in create's transaction after the migrations: a .sql "
        "file relative to the config file, or module:function (def seed(conn, tenant))",
        example="seeds/tenant.sql",
    ),
    Key(
        "models",
        str,
        None,
        "the SQLAlchemy models mtm new --autogenerate compares with, as module:attribute "
        "of a MetaData, or a list of them (docs/authoring.md)",
        example="myapp.models:Base.metadata",
        many=True,
    ),
    Key(
        "distributed",
        bool,
        None,
        "on a Citus cluster, whether mtm create makes distributed tenant schemas; unset: "
        "yes when the database has the citus extension and workers (docs/citus.md)",
        example=True,
    ),
)

BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}
URL_PARTS = ("db_user", "db_password", "db_name", "db_host", "db_port")


def accepts(key: Key, value: Any) -> bool:
    """Whether ``value`` (from a config file) has the type of ``key``."""
    if key.many and isinstance(value, list):
        return all(accepts(Key(key.name, key.type, None, ""), v) for v in value)
    return isinstance(value, key.type) and (key.type is bool or not isinstance(value, bool))


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "auto": None}
_BOOLEANS |= {"false": False, "0": False, "no": False, "off": False}


def from_env(key: Key, text: str) -> Any:
    """The typed value of ``MTM_<KEY>=text``; ValueError saying what it must be."""
    if key.type is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("must be an integer") from None
    if key.type is bool:
        if text.strip().lower() not in _BOOLEANS:
            raise ValueError("must be true, false or auto")
        return _BOOLEANS[text.strip().lower()]
    return text


def default(name: str) -> Any:
    """The default of key ``name``."""
    return BY_NAME[name].default


def help_of(name: str) -> str:
    """The one-line help of key ``name``, for CLI options that override it."""
    key = BY_NAME[name]
    shown = f"; default {key.default}" if key.default is not None else ""
    return f"{key.help[0].upper()}{key.help[1:]} (config: {name}, env: {key.env}{shown})."


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def init_template() -> str:
    """The commented ``mtm.toml`` that ``mtm init`` writes: every key, with its default."""
    lines = [
        "# mtm configuration. Every key is optional; the values shown are the defaults.",
        "# Each key can also be set as MTM_<KEY> in the environment (MTM_JOBS=8);",
        "# precedence: command-line option > environment > this file > default.",
    ]
    for key in KEYS:
        lines += ["", f"# {key.help[0].upper()}{key.help[1:]}."]
        if key.default is not None:
            lines.append(f"{key.name} = {_toml(key.default)}")
        elif key.example is not None:
            lines.append(f"# {key.name} = {_toml(key.example)}")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """The README's table of keys (a test checks that the README holds exactly this)."""
    rows = ["| key | env | default | meaning |", "| --- | --- | --- | --- |"]
    for key in KEYS:
        shown = "—" if key.default is None else f"`{_toml(key.default)}`"
        legacy = f" (JSON `{key.legacy}`)" if key.legacy else ""
        rows.append(f"| `{key.name}` | `{key.env}` | {shown} | {key.help}{legacy} |")
    return "\n".join(rows) + "\n"
