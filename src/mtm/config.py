"""Configuration: ``mtm.toml``, ``[tool.mtm]`` in ``pyproject.toml``, or the legacy JSON file.

Keys (declared once, in ``keys.py``) match the original multi-tenant-migrate tool's one
for one. Each comes from, in order of precedence: a command-line option (``--url``,
``--jobs``...), the environment variable ``MTM_<KEY>``, the file, its default. Every
mistake is a ``ConfigError`` naming the file or variable and the key. SQLAlchemy is
imported only for a URL libpq could read otherwise (``conninfo``): ``--help`` stays fast.
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
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, urlencode

from .errors import ConfigError, InvalidName
from .identifiers import validate_role_prefix
from .keys import BY_NAME, KEYS, URL_PARTS, accepts, default, from_env

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

CONFIG_FILE = "mtm.toml"
PYPROJECT = "pyproject.toml"
ENV_DATABASE_URL = BY_NAME["database_url"].env

# The original tool's JSON keys.
LEGACY_JSON_KEYS = {k.legacy: k.name for k in KEYS if k.legacy}

_TABLE_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_DURATION_RE = re.compile(r"\d+(\.\d+)?\s*(us|ms|s|min|h|d)?")


def _problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for ``key`` (beyond its type), or None."""
    if value is None:
        return None
    if key in ("tenant_table", "migrations_table") and not _TABLE_NAME_RE.fullmatch(value):
        return f"{key} {value!r} must be a plain lower-case table name"
    if key == "jobs" and value < 1:
        return f"jobs must be at least 1, got {value}"
    if key == "retries" and value < 0:
        return f"retries must be 0 or more, got {value}"
    if key in ("lock_timeout", "statement_timeout") and not _DURATION_RE.fullmatch(value.strip()):
        return f"{key} {value!r} is not a PostgreSQL duration such as '5s'"
    if key == "tenant_role_prefix":
        try:
            validate_role_prefix(value)
        except InvalidName as exc:
            return f"tenant_role_prefix: {exc.message}"
    return None


@dataclass(frozen=True)
class Config:
    """Where the database is, where the migrations are, and how to run them."""

    root: Path = field(default_factory=Path.cwd)
    path: Path | None = None
    database_url: str | None = default("database_url")
    tenant_table: str = default("tenant_table")
    public_schema_display_name: str = default("public_schema_display_name")
    migrations_directory: Path = Path(default("migrations_directory"))
    migrations_table: str = default("migrations_table")
    jobs: int = default("jobs")
    lock_timeout: str = default("lock_timeout")
    statement_timeout: str | None = default("statement_timeout")
    retries: int = default("retries")
    tenant_role_prefix: str = default("tenant_role_prefix")
    tenant_role_member: str | None = default("tenant_role_member")
    seed: str | None = default("seed")
    models: str | tuple[str, ...] | None = default("models")  # mtm.modelset reads it
    distributed: bool | None = default("distributed")  # mtm.citus reads it

    def __post_init__(self) -> None:
        source = str(self.path) if self.path else "config"
        for key in KEYS:
            problem = _problem(key.name, getattr(self, key.name, None))
            if problem:
                raise ConfigError(f"{source}: {problem}")
        if self.database_url is not None:
            _check_url(self.database_url, source)
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
        overrides: Mapping[str, Any] | None = None,
    ) -> Config:
        """Read the config at ``path``, or find one by walking up from ``cwd``.

        ``env`` (default ``os.environ``) supplies ``MTM_<KEY>`` variables; ``overrides``
        (command-line options, already typed) win over both.
        """
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
        return cls.from_mapping(raw, root=file.parent, path=file, env=env, overrides=overrides)

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        root: Path,
        path: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Config:
        """Build a Config from already-parsed keys (snake_case), checking every one.

        Layers, lowest first: the file's keys, ``MTM_<KEY>`` variables, ``overrides``.
        """
        env = os.environ if env is None else env
        source = str(path) if path else "config"
        layers = [_file_values(raw, source), _env_values(env), _option_values(overrides or {})]
        values: dict[str, Any] = {}
        url: str | None = None
        url_source = "config"
        for layer in layers:
            for key, (value, origin) in layer.items():
                problem = _problem(key, value)
                if problem:
                    raise ConfigError(f"{origin}: {problem}")
                if key not in URL_PARTS and key != "database_url":
                    values[key] = value
            url, url_source = _layer_url(layer, url, url_source)
        if url is not None:
            _check_url(url, url_source)
        if "migrations_directory" in values:
            values["migrations_directory"] = Path(values["migrations_directory"])
        fields: dict[str, Any] = values
        return cls(root=root, path=path, database_url=url, **fields)

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


_Layer = dict[str, tuple[Any, str]]  # key -> (value, where it came from)


def _file_values(raw: Mapping[str, Any], source: str) -> _Layer:
    out: _Layer = {}
    for key, value in raw.items():
        if key not in BY_NAME:
            known = ", ".join(sorted(BY_NAME))
            raise ConfigError(f"{source}: unknown key {key!r} (known keys: {known})")
        expected = BY_NAME[key].type
        if not accepts(BY_NAME[key], value):
            shown = "" if BY_NAME[key].secret else f" {value!r}"
            raise ConfigError(
                f"{source}: key {key!r} must be {_type_name(expected)}, "
                f"got {_type_name(type(value))}{shown}"
            )
        out[key] = (tuple(value) if isinstance(value, list) else value, source)
    return out


def _env_values(env: Mapping[str, str]) -> _Layer:
    """``MTM_<KEY>`` variables, typed; other ``MTM_`` names are not keys and are ignored."""
    out: _Layer = {}
    for key in KEYS:
        text = env.get(key.env)
        if not text:
            continue
        try:
            out[key.name] = (from_env(key, text), key.env)
        except ValueError as exc:
            shown = "" if key.secret else f", got {text!r}"
            raise ConfigError(f"{key.env}: {exc}{shown}") from None
    return out


def _option_values(overrides: Mapping[str, Any]) -> _Layer:
    out: _Layer = {}
    for key, value in overrides.items():
        if key not in BY_NAME:
            raise ValueError(f"not a config key: {key!r}")
        if value is not None:
            out[key] = (value, "--url" if key == "database_url" else f"--{key.replace('_', '-')}")
    return out


def _layer_url(layer: _Layer, url: str | None, source: str) -> tuple[str | None, str]:
    """The database URL after one layer: its database_url replaces the URL of the layers
    below; its db_* parts replace those parts of it (or compose a new one)."""
    parts = {k: layer[k] for k in URL_PARTS if k in layer}
    if "database_url" in layer:
        value, origin = layer["database_url"]
        if parts:
            names = sorted({o for _, o in parts.values()})
            if names == [origin]:
                raise ConfigError(
                    f"{origin}: give either database_url or the db_* keys, not both "
                    f"(found database_url and {', '.join(sorted(parts))})"
                )
            raise ConfigError(f"{origin}: give either it or {', '.join(names)}, not both")
        return value, origin
    if not parts:
        return url, source
    given = {k: v for k, (v, _) in parts.items()}
    origin = ", ".join(sorted({o for _, o in parts.values()}))
    if url is None:
        return _url_from_parts(given), origin
    base = sqlalchemy_url(url, source)
    below = {
        "db_user": base.username,
        "db_password": base.password,
        "db_host": base.host,
        "db_port": base.port,
        "db_name": base.database,
    }
    merged = {k: v for k, v in {**below, **given}.items() if v is not None}
    return _url_from_parts(merged, default_host=None, query=base.query), origin


def _url_from_parts(
    parts: Mapping[str, Any],
    *,
    default_host: str | None = "localhost",
    query: Mapping[str, str | tuple[str, ...]] | None = None,
) -> str:
    """The URL of the db_* keys, every part percent-encoded, so that psql and libpq read
    it back exactly (SQLAlchemy's rendering leaves a space in a password as it is).
    ``query`` keeps the parameters of a URL whose parts a higher layer replaced."""
    user = parts.get("db_user")
    password = parts.get("db_password")
    userinfo = quote(str(user), safe="") if user is not None else ""
    if password is not None:
        userinfo += ":" + quote(str(password), safe="")
    host = parts.get("db_host") or default_host or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts['db_port']}" if parts.get("db_port") is not None else ""
    name = parts.get("db_name")
    path = "/" + quote(name, safe="") if name is not None else ""
    tail = "?" + urlencode(query, doseq=True) if query else ""
    return f"postgresql+psycopg://{userinfo}{'@' if userinfo else ''}{host}{port}{path}{tail}"


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
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

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


def remember_secret(password: str, *, rendered: bool = True) -> None:
    """Have ``mask_url`` hide ``password`` (and its URL spellings) in every text.

    ``rendered=False``: not as SQLAlchemy spells it in a URL, which needs its import;
    a command that makes an engine passes the URL through ``sqlalchemy_url`` again."""
    if len(password) < MIN_SECRET_LENGTH:
        return
    forms = {password, quote(password, safe=""), quote_plus(password)}
    if rendered:
        from sqlalchemy.engine import URL

        url = URL.create("x", username="u", password=password, host="h")
        forms.add(url.render_as_string(hide_password=False)[len("x://u:") : -len("@h")])
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


def _check_url(url: str, source: str) -> None:
    from .conninfo import check  # psycopg's import, only where there is a URL

    check(url, source)


def _type_name(t: type) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", float: "a number"}
    return {**names, list: "a list", dict: "a table"}.get(t, t.__name__)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
