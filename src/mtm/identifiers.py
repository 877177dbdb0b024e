"""Schema names and domains: the one place that validates them and builds identifiers.

Tenant input never reaches SQL as text: a schema name must pass
``validate_schema_name`` and is then always quoted by ``quote_ident``; domains are
normalised and validated here and only ever travel as bound parameters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import idna

from .errors import InvalidName

MAX_IDENTIFIER_BYTES = 63

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]*")

# PostgreSQL's reserved key words (Appendix C, "reserved" and "reserved (can be function
# or type)"). Quoting would make them work, but a tenant schema named "select" is a trap
# for every hand-written query, so mtm refuses them.
RESERVED_WORDS = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization binary both case
    cast check collate collation column concurrently constraint create cross
    current_catalog current_date current_role current_schema current_time
    current_timestamp current_user default deferrable desc distinct do else end except
    false fetch for foreign freeze from full grant group having ilike in initially inner
    intersect into is isnull join lateral leading left like limit localtime
    localtimestamp natural not notnull null offset on only or order outer overlaps
    placing primary references returning right select session_user similar some
    symmetric system_user table tablesample then to trailing true union unique user
    using variadic verbose when where window with
    """.split()
)

_RESERVED_SCHEMAS = frozenset({"public", "information_schema"})


def validate_schema_name(name: object) -> str:
    """Return ``name`` if it is a plain lower-case identifier mtm accepts as a tenant schema.

    Raises ``InvalidName`` with the reason otherwise.
    """
    if not isinstance(name, str):
        raise InvalidName(f"schema name must be text, got {type(name).__name__}")
    shown = repr(name)
    if not name:
        raise InvalidName("schema name is empty")
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise InvalidName(
            f"schema name {shown} is {len(name.encode('utf-8'))} bytes; "
            f"PostgreSQL allows at most {MAX_IDENTIFIER_BYTES}"
        )
    if not _SCHEMA_RE.fullmatch(name):
        raise InvalidName(
            f"schema name {shown} is not a plain lower-case identifier "
            "(use a-z, 0-9 and _, starting with a letter or _)"
        )
    if name in _RESERVED_SCHEMAS:
        raise InvalidName(f"schema name {shown} is reserved by PostgreSQL")
    if name.startswith("pg_"):
        raise InvalidName(f"schema name {shown} starts with pg_, which PostgreSQL reserves")
    if name in RESERVED_WORDS:
        raise InvalidName(f"schema name {shown} is an SQL reserved word")
    return name


def quote_ident(name: str) -> str:
    """Quote any text as a PostgreSQL identifier (double quotes, inner quotes doubled).

    Used for every schema and table name mtm puts in SQL, validated or not, so that even
    a name that slipped past validation cannot change the statement.
    """
    if "\x00" in name:
        raise InvalidName("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote text as a standard-conforming SQL string literal."""
    if "\x00" in value:
        raise InvalidName("text contains a NUL byte")
    return "'" + value.replace("'", "''") + "'"


_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
MAX_DOMAIN_LENGTH = 253
_HOST_PORT_RE = re.compile(r"[^:\[\]]+:[0-9]{1,5}")


MAX_PORT = 65535


def normalize_host(host: str) -> str:
    """Normalise a Host header or domain: lower case, no port, no trailing dot.

    ``"Acme.Example.com:8443"`` -> ``"acme.example.com"``; ``"[::1]:80"`` -> ``"::1"``.
    Unicode names become their ``xn--`` form under IDNA 2008 / UTS 46 (what browsers
    send: ``ß`` stays ``ß``, it is not folded to ``ss`` as IDNA 2003 did). A port that is
    not a number from 1 to 65535 gives ``""``: no tenant owns such a host. Does not
    validate otherwise.
    """
    host = host.strip()
    port: str | None = None
    if host.startswith("["):  # IPv6 literal, maybe with a port
        end = host.find("]")
        if end != -1 and host[end + 1 : end + 2] == ":":
            port = host[end + 2 :]
        host = host[1:end] if end != -1 else host[1:]
    elif host.count(":") == 1:
        host, port = host.split(":", 1)
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= MAX_PORT):
        return ""
    host = host.rstrip(".").lower()
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            pass
    return host


def legacy_idna_form(domain: str) -> str | None:
    """The form IDNA 2003 gave a normalised domain, where it differs (``ß`` -> ``ss``).

    mtm once stored Unicode domains that way; lookups try this form after the current
    one, so those tenants still resolve.
    """
    if "xn--" not in domain:
        return None
    try:
        legacy = idna.decode(domain).encode("idna").decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None
    return legacy if legacy != domain else None


def validate_domains(domains: Iterable[object]) -> list[str]:
    """Each domain validated and normalised (``validate_domain``), in the order given,
    a host named twice kept once."""
    return list(dict.fromkeys(validate_domain(d) for d in domains))


def validate_domain(domain: object) -> str:
    """Return the normalised form of a domain mtm accepts, or raise ``InvalidName``."""
    if not isinstance(domain, str):
        raise InvalidName(f"domain must be text, got {type(domain).__name__}")
    shown = repr(domain)
    raw = domain.strip()
    if ":" in raw and not _HOST_PORT_RE.fullmatch(raw):
        # normalize_host reads "http://acme.com" as host "http" with a port: refuse it.
        raise InvalidName(
            f"domain {shown} is not a host name (no scheme or path; a port, if any, is digits)"
        )
    port = raw.rsplit(":", 1)[1] if ":" in raw else ""
    if port and not 1 <= int(port) <= MAX_PORT:
        raise InvalidName(f"domain {shown} has port {port}; a port is a number from 1 to 65535")
    host = normalize_host(domain)
    if not host:
        raise InvalidName(f"domain {shown} is empty")
    if len(host) > MAX_DOMAIN_LENGTH:
        raise InvalidName(f"domain {shown} is longer than {MAX_DOMAIN_LENGTH} characters")
    for label in host.split("."):
        if len(label) > 63:
            raise InvalidName(f"domain {shown} has a label longer than 63 characters")
        if not _LABEL_RE.fullmatch(label):
            raise InvalidName(
                f"domain {shown} is not a valid host name "
                "(labels of letters, digits and inner hyphens, separated by dots)"
            )
    return host


DEFAULT_ROLE_PREFIX = "mtm_tenant_"
_ROLE_PREFIX_RE = re.compile(r"[a-z_][a-z0-9_]{0,29}")


def validate_role_prefix(prefix: object) -> str:
    """Return ``prefix`` if it can start a tenant role name (a-z, 0-9, _; 1-30 bytes)."""
    if not isinstance(prefix, str) or not _ROLE_PREFIX_RE.fullmatch(prefix):
        raise InvalidName(
            f"role prefix {prefix!r} must be 1-30 characters of a-z, 0-9 and _, "
            "not starting with a digit"
        )
    if prefix.startswith("pg_"):
        raise InvalidName(f"role prefix {prefix!r} starts with pg_, which PostgreSQL reserves")
    return prefix


def tenant_role_name(schema: str, prefix: str = DEFAULT_ROLE_PREFIX) -> str:
    """The PostgreSQL role of a tenant: ``prefix + schema``, at most 63 bytes.

    A name that would be longer keeps the start of the schema and ends in 8 hex digits
    of a hash of the whole schema name, so two long schemas never share a role.
    """
    schema = validate_schema_name(schema)
    prefix = validate_role_prefix(prefix)
    name = prefix + schema
    if len(name) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(schema.encode("ascii")).hexdigest()[:8]
    return name[: MAX_IDENTIFIER_BYTES - 9] + "_" + digest


def do_block(body: str) -> str:
    """``DO`` with a dollar-quote tag that does not occur in ``body`` (which may hold a
    quoted name), so nothing in it can end the block early."""
    tag, n = "$mtm$", 0
    while tag in body:
        n += 1
        tag = f"$mtm{n}$"
    return f"DO {tag} {body} {tag}"
