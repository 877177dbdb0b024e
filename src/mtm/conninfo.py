"""A database URL as libpq's connection parameters, for the URLs that libpq and
SQLAlchemy read alike.

Why: the read commands connect with psycopg alone (``database.direct``), without
SQLAlchemy's import; every other command connects through SQLAlchemy's engine, which
parses the URL its own way. The two parsers differ at the edges (an unencoded ``/``,
``?`` or ``#`` in a password, ``+`` in a query value, a repeated query key), so a read
command could reach another server or database than a write command given the same
URL. Only a URL of a plain shape, where they cannot differ, is read by libpq here
(``tests/test_conninfo.py`` holds them to the same answer); any other URL goes through
SQLAlchemy's engine, as before.
"""

from __future__ import annotations

import re

from psycopg.conninfo import conninfo_to_dict

from .config import remember_secret, sqlalchemy_url

# Unreserved characters, and percent-encoded printable ASCII (both parsers decode it to
# the same text; other bytes SQLAlchemy decodes as UTF-8 and libpq passes as they are).
_PART = r"(?:[A-Za-z0-9._~-]|%[2-7][0-9A-Fa-f])"
_VALUE = r"(?:[A-Za-z0-9._~/-]|%[2-7][0-9A-Fa-f])"  # a query's: a socket's folder too
_SCHEME = re.compile(r"postgres(?:ql)?(?:\+psycopg)?://")
_PLAIN = re.compile(
    _SCHEME.pattern + rf"(?:(?P<user>{_PART}+)(?::(?P<password>{_PART}+))?@)?"
    r"(?P<host>[A-Za-z0-9.-]*)(?::(?P<port>[1-9][0-9]{0,4}))?"
    r"(?:/(?P<dbname>[A-Za-z0-9._-]*))?"
    rf"(?:\?(?P<query>[a-z_]+={_VALUE}*(?:&[a-z_]+={_VALUE}*)*))?"
)
# What a query may set: the parameters mtm's connections use or leave to the user.
# Others (``options``, which mtm extends; ``hostaddr``, ``service``...) take the engine.
_QUERY_KEYS = frozenset(
    {"host", "port", "sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout"}
)


def libpq_params(url: str) -> dict[str, str] | None:
    """The connection parameters of ``url`` if it has the plain shape, else None."""
    match = _PLAIN.fullmatch(url)
    if match is None:
        return None
    query = match.group("query")
    if query:
        keys = [item.split("=", 1)[0] for item in query.split("&")]
        if len(set(keys)) != len(keys) or not set(keys) <= _QUERY_KEYS:
            return None
    params = {
        k: str(v)
        for k, v in conninfo_to_dict(_SCHEME.sub("postgresql://", url, count=1)).items()
        if v is not None
    }
    if "@" in params.get("user", ""):
        return None  # refused by ``sqlalchemy_url``: where did the user name end?
    return params


def shown(url: str) -> str:
    """How a plain URL is named in messages: as SQLAlchemy's engine names it (the
    password still in it; ``config.mask_url`` hides it)."""
    return _SCHEME.sub("postgresql+psycopg://", url, count=1)


def check(url: str, source: str) -> None:
    """Refuse a URL mtm cannot use, as ``config.sqlalchemy_url`` does, and remember its
    password; a plain one without importing SQLAlchemy."""
    params = libpq_params(url)
    if params is None:
        sqlalchemy_url(url, source)
    elif params.get("password"):
        remember_secret(params["password"], rendered=False)
