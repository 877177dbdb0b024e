"""Configuration: ``mtm.toml``, ``[tool.mtm]`` in ``pyproject.toml``, or the legacy JSON file.

Keys match the original multi-tenant-migrate tool's one for one; the environment
variable ``MTM_DATABASE_URL`` overrides the database. Every mistake in a file is a
``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

import json
import os
import re
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigError, InvalidName
from .identifiers import validate_role_prefix

CONFIG_FILE = "mtm.toml"
PYPROJECT = "pyproject.toml"
ENV_DATABASE_URL = "MTM_DATABASE_URL"

# key -> (type, default). The five db_* parts compose a URL when database_url is absent.
_KEYS: dict[str, tuple[type, Any]] = {
    "database_url": (str, None),
    "db_user": (str, None),
    "db_password": (str, None),
    "db_name": (str, None),
    "db_host": (str, None),
    "db_port": (int, None),
    "tenant_table": (str, "tenants"),
    "public_schema_display_name": (str, "*PUBLIC"),
    "migrations_directory": (str, "migrations"),
    "migrations_table": (str, "mtm_migrations"),
    "jobs": (int, 4),
    "lock_timeout": (str, "5s"),
    "statement_timeout": (str, None),
    "retries": (int, 2),
    "tenant_role_prefix": (str, "mtm_tenant_"),
    "tenant_role_member": (str, None),
}

# Keys whose values are never shown in a message.
_SECRET_KEYS = {"database_url", "db_password"}

# The original tool's JSON keys.
LEGACY_JSON_KEYS = {
    "dbUser": "db_user",
    "dbPassword": "db_password",
    "dbName": "db_name",
    "dbHost": "db_host",
    "dbPort": "db_port",
    "tenantMapperTableName": "tenant_table",
    "publicSchemaDisplayName": "public_schema_display_name",
    "migrationsDirectory": "migrations_directory",
    "migrationsTableName": "migrations_table",
}

_TABLE_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_DURATION_RE = re.compile(r"\d+(\.\d+)?\s*(us|ms|s|min|h|d)?")


@dataclass(frozen=True)
class Config:
    """Where the database is, where the migrations are, and how to run them."""

    root: Path = field(default_factory=Path.cwd)
    path: Path | None = None
    database_url: str | None = None
    tenant_table: str = "tenants"
    public_schema_display_name: str = "*PUBLIC"
    migrations_directory: Path = Path("migrations")
    migrations_table: str = "mtm_migrations"
    jobs: int = 4
    lock_timeout: str = "5s"
    statement_timeout: str | None = None
    retries: int = 2
    tenant_role_prefix: str = "mtm_tenant_"
    tenant_role_member: str | None = None

    def __post_init__(self) -> None:
        source = str(self.path) if self.path else "config"
        for key in ("tenant_table", "migrations_table"):
            value = getattr(self, key)
            if not _TABLE_NAME_RE.fullmatch(value):
                raise ConfigError(
                    f"{source}: {key} {value!r} must be a plain lower-case table name"
                )
        if self.jobs < 1:
            raise ConfigError(f"{source}: jobs must be at least 1, got {self.jobs}")
        if self.retries < 0:
            raise ConfigError(f"{source}: retries must be 0 or more, got {self.retries}")
        for key in ("lock_timeout", "statement_timeout"):
            value = getattr(self, key)
            if value is not None and not _DURATION_RE.fullmatch(value.strip()):
                raise ConfigError(
                    f"{source}: {key} {value!r} is not a PostgreSQL duration such as '5s'"
                )
        if self.database_url is not None:
            sqlalchemy_url(self.database_url, source)
        try:
            validate_role_prefix(self.tenant_role_prefix)
        except InvalidName as exc:
            raise ConfigError(f"{source}: tenant_role_prefix: {exc.message}") from None
        if not self.migrations_directory.is_absolute():
            object.__setattr__(self, "migrations_directory", self.root / self.migrations_directory)

    # --- loading ---------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Config:
        """Read the config at ``path``, or find one by walking up from ``cwd``."""
        env = os.environ if env is None else env
        if path is not None:
            file = Path(path).expanduser().resolve()
            if not file.exists():
                raise ConfigError(f"config file {file} does not exist")
            raw = _read(file)
        else:
            found = find_config(Path(cwd) if cwd else Path.cwd())
            if found is None:
                raise ConfigError(
                    f"no {CONFIG_FILE} (or [tool.mtm] in {PYPROJECT}) found in "
                    f"{Path(cwd or Path.cwd()).resolve()} or any parent; "
                    "run 'mtm init' or pass --config"
                )
            file, raw = found
        return cls.from_mapping(raw, root=file.parent, path=file, env=env)

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        root: Path,
        path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Config:
        """Build a Config from already-parsed keys (snake_case), checking every one."""
        source = str(path) if path else "config"
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in _KEYS:
                known = ", ".join(sorted(_KEYS))
                raise ConfigError(f"{source}: unknown key {key!r} (known keys: {known})")
            expected, _ = _KEYS[key]
            if not isinstance(value, expected) or isinstance(value, bool):
                shown = "" if key in _SECRET_KEYS else f" {value!r}"
                raise ConfigError(
                    f"{source}: key {key!r} must be {_type_name(expected)}, "
                    f"got {_type_name(type(value))}{shown}"
                )
            values[key] = value
        url = values.get("database_url")
        parts = {
            k: values[k]
            for k in ("db_user", "db_password", "db_name", "db_host", "db_port")
            if k in values
        }
        if url is not None and parts:
            raise ConfigError(
                f"{source}: give either database_url or the db_* keys, not both "
                f"(found database_url and {', '.join(sorted(parts))})"
            )
        if parts:
            url = _url_from_parts(parts)
        env = os.environ if env is None else env
        if env.get(ENV_DATABASE_URL):
            url = env[ENV_DATABASE_URL]
            source = ENV_DATABASE_URL
        if url is not None:
            sqlalchemy_url(url, source)
        return cls(
            root=root,
            path=path,
            database_url=url,
            tenant_table=values.get("tenant_table", "tenants"),
            public_schema_display_name=values.get("public_schema_display_name", "*PUBLIC"),
            migrations_directory=Path(values.get("migrations_directory", "migrations")),
            migrations_table=values.get("migrations_table", "mtm_migrations"),
            jobs=values.get("jobs", 4),
            lock_timeout=values.get("lock_timeout", "5s"),
            statement_timeout=values.get("statement_timeout"),
            retries=values.get("retries", 2),
            tenant_role_prefix=values.get("tenant_role_prefix", "mtm_tenant_"),
            tenant_role_member=values.get("tenant_role_member"),
        )

    # --- derived ---------------------------------------------------------------------

    @property
    def embedded_data_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its data when no database is configured."""
        return self.root / ".mtm" / "pgdata"

    @property
    def domain_table(self) -> str:
        return f"{self.tenant_table}_domains"

    @property
    def state_table(self) -> str:
        """The public summary of every schema's ledger (kept in step with it)."""
        return f"{self.migrations_table}_state"


def _url_from_parts(parts: dict[Any, Any]) -> str:
    """The URL of the db_* keys, every part percent-encoded, so that psql and libpq read
    it back exactly (SQLAlchemy's rendering leaves a space in a password as it is)."""
    user = parts.get("db_user")
    password = parts.get("db_password")
    userinfo = quote(user, safe="") if user is not None else ""
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    host = parts.get("db_host") or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts['db_port']}" if parts.get("db_port") is not None else ""
    name = parts.get("db_name")
    path = "/" + quote(name, safe="") if name is not None else ""
    return f"postgresql+psycopg://{userinfo}{'@' if userinfo else ''}{host}{port}{path}"


def find_config(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """Walk up from ``start``: the first ``mtm.toml``, or ``pyproject.toml`` with [tool.mtm]."""
    for folder in [start.resolve(), *start.resolve().parents]:
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate, _read(candidate)
        pyproject = folder / PYPROJECT
        if pyproject.is_file():
            data = _load_toml(pyproject)
            tool = data.get("tool", {})
            if isinstance(tool, dict) and "mtm" in tool:
                return pyproject, _section(tool["mtm"], pyproject)
    return None


def _read(file: Path) -> dict[str, Any]:
    if file.suffix == ".json":
        return _read_legacy_json(file)
    data = _load_toml(file)
    if file.name == PYPROJECT:
        tool = data.get("tool", {})
        if not isinstance(tool, dict) or "mtm" not in tool:
            raise ConfigError(f"{file}: has no [tool.mtm] section")
        return _section(tool["mtm"], file)
    return data


def _section(value: Any, file: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: [tool.mtm] must be a table")
    return value


def _load_toml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file}: {_reason(exc)}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None


def _read_legacy_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file}: {_reason(exc)}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: must hold a JSON object")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in LEGACY_JSON_KEYS:
            known = ", ".join(sorted(LEGACY_JSON_KEYS))
            raise ConfigError(f"{file}: unknown key {key!r} (known keys: {known})")
        if key == "dbPort" and isinstance(value, str) and value.isdigit():
            value = int(value)  # the original tool took ports as strings too
        out[LEGACY_JSON_KEYS[key]] = value
    return out


def sqlalchemy_url(url: str, source: str = "database_url") -> URL:
    """Parse a database URL and point it at psycopg 3 (``postgresql+psycopg``).

    A URL whose user name or password holds an unencoded ``@`` is refused: no parser
    can tell where such a password ends (SQLAlchemy and libpq both stop at the first
    ``@``, which would send the rest of the password to the server as a host name).
    The password of every URL parsed here is remembered, so that ``mask_url`` hides it
    wherever it turns up later, whatever a driver or the server did to the URL.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        parsed = None
    if parsed is None or _ambiguous(parsed):
        if _AUTHORITY_AT.search(url):
            raise ConfigError(
                f"{source}: cannot tell where the password ends in {mask_url(url)!r}: "
                "percent-encode @ as %40 in the user name and password "
                "(and : as %3A, / as %2F, % as %25, space as %20), or use the db_* keys"
            )
        raise ConfigError(f"{source}: not a database URL: {mask_url(url)!r}")
    if parsed.password:
        remember_secret(str(parsed.password))
    query_password = parsed.query.get("password")
    for item in [query_password] if isinstance(query_password, str) else query_password or ():
        remember_secret(item)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise ConfigError(
        f"{source}: mtm needs a PostgreSQL URL (postgresql://...), got {parsed.drivername}://"
    )


# scheme://...@...@ before the query: an @ that is not the one ending the user info.
_AUTHORITY_AT = re.compile(r"://[^?]*@[^?]*@")


def _ambiguous(parsed: URL) -> bool:
    """A parse that took part of the password for the host, port or database."""
    parts = (parsed.username, parsed.host, parsed.database)
    return any(part is not None and "@" in part for part in parts)


# user:password@ in a URL anywhere in a text, up to the last @ before the next
# whitespace (a password may hold an unencoded @, /, : or space), and password=... as a
# URL query parameter or libpq keyword. When in doubt, more is masked, never less.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\n]*?@(?!\S*@)", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'\"]+)", re.IGNORECASE)

# Passwords of the URLs this process parsed (sqlalchemy_url), in every spelling a
# message may hold them: as given, percent-encoded, as SQLAlchemy renders them.
MIN_SECRET_LENGTH = 4  # shorter ones would mask every second word and protect nothing
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()


def remember_secret(password: str) -> None:
    """Have ``mask_url`` hide ``password`` (and its URL spellings) in every text."""
    if len(password) < MIN_SECRET_LENGTH:
        return
    rendered = URL.create("x", username="u", password=password, host="h")
    spelled = rendered.render_as_string(hide_password=False)[len("x://u:") : -len("@h")]
    forms = {password, quote(password, safe=""), quote_plus(password), spelled}
    with _SECRETS_LOCK:
        _SECRETS.update(form for form in forms if len(form) >= MIN_SECRET_LENGTH)


def mask_url(text: str) -> str:
    """A URL, or any message holding one, with every password replaced by ***.

    Used for every message and log line mtm shows: the user:password@ part of URLs,
    ``password=`` parameters (in a URL's query or a libpq connection string), and any
    occurrence of the password of a URL mtm parsed (libpq's own error text included).
    """
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + "***@", text)
    text = _PASSWORD_PARAM.sub(lambda m: m.group(1) + "***", text)
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _type_name(t: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        bool: "a boolean",
        float: "a number",
        list: "a list",
        dict: "a table",
    }.get(t, t.__name__)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
