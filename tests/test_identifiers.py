"""identifiers.py without a database: host normalisation, domain and role-name rules.

What PostgreSQL itself makes of quoted names is tried against a server in
test_hostile_input.py; these are the pure rules, each refusal with its message.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtm.errors import InvalidName
from mtm.identifiers import (
    DEFAULT_ROLE_PREFIX,
    MAX_IDENTIFIER_BYTES,
    normalize_host,
    quote_ident,
    quote_literal,
    tenant_role_name,
    validate_domain,
    validate_role_prefix,
    validate_schema_name,
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Acme.Example.com:8443", "acme.example.com"),
        ("acme.example.com.", "acme.example.com"),
        ("  ACME.example.COM  ", "acme.example.com"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),  # a bare IPv6 address keeps its colons
        ("bücher.example", "xn--bcher-kva.example"),
        ("localhost:8000", "localhost"),
    ],
)
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("http://acme.com", "is not a host name (no scheme or path"),
        ("acme.com:port", "is not a host name"),
        ("", "is empty"),
        (" . ", "is empty"),
        ("a" * 64 + ".com", "has a label longer than 63 characters"),
        (".".join(["a" * 60] * 5), "is longer than 253 characters"),
        ("acme.com/path", "is not a valid host name"),
        ("-acme.com", "is not a valid host name"),
        ("acme..com", "is not a valid host name"),
        ("acme_corp.com", "is not a valid host name"),
        (None, "domain must be text, got NoneType"),
    ],
)
def test_bad_domains_are_refused_saying_why(domain: object, message: str) -> None:
    with pytest.raises(InvalidName, match=re.escape(message)):
        validate_domain(domain)


def test_a_domain_is_stored_in_its_normal_form() -> None:
    assert validate_domain("Acme.Example.com:8443") == "acme.example.com"
    assert validate_domain("bücher.example") == "xn--bcher-kva.example"
    assert validate_domain("localhost") == "localhost"


def test_quoting_doubles_inner_quotes_and_refuses_nul() -> None:
    assert quote_ident('we"ird') == '"we""ird"'
    assert quote_literal("it's") == "'it''s'"
    for quote in (quote_ident, quote_literal):
        with pytest.raises(InvalidName, match="NUL byte"):
            quote("a\x00b")


@pytest.mark.parametrize("prefix", ["mtm_tenant_", "app_", "_", "r" * 30])
def test_role_prefixes_accepted(prefix: str) -> None:
    assert validate_role_prefix(prefix) == prefix


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("", "must be 1-30 characters"),
        ("r" * 31, "must be 1-30 characters"),
        ("App_", "must be 1-30 characters"),
        ("1app_", "not starting with a digit"),
        ("app-", "must be 1-30 characters"),
        (None, "must be 1-30 characters"),
        ("pg_app_", "starts with pg_, which PostgreSQL reserves"),
    ],
)
def test_bad_role_prefixes_are_refused_saying_why(prefix: object, message: str) -> None:
    with pytest.raises(InvalidName, match=re.escape(message)):
        validate_role_prefix(prefix)


_SCHEMA = st.from_regex(r"[a-z_][a-z0-9_]{0,62}", fullmatch=True).filter(
    lambda s: _valid(s) is not None
)
_PREFIX = st.from_regex(r"[a-z_][a-z0-9_]{0,29}", fullmatch=True).filter(
    lambda p: not p.startswith("pg_")
)
_ROLE = re.compile(r"[a-z_][a-z0-9_]*")


def _valid(schema: str) -> str | None:
    try:
        return validate_schema_name(schema)
    except InvalidName:
        return None


@given(schema=_SCHEMA, prefix=_PREFIX)
def test_a_role_name_fits_postgresql_and_starts_with_its_prefix(schema: str, prefix: str) -> None:
    role = tenant_role_name(schema, prefix)
    assert len(role.encode()) <= MAX_IDENTIFIER_BYTES
    assert _ROLE.fullmatch(role)  # usable unquoted, like the schema itself
    assert role.startswith(prefix)
    if len(prefix + schema) <= MAX_IDENTIFIER_BYTES:
        assert role == prefix + schema  # short names are read as they are
    assert tenant_role_name(schema, prefix) == role  # the same tenant, the same role


@given(a=_SCHEMA, b=_SCHEMA, prefix=_PREFIX)
def test_two_tenants_never_share_a_role(a: str, b: str, prefix: str) -> None:
    if a != b:
        assert tenant_role_name(a, prefix) != tenant_role_name(b, prefix)


def test_long_schemas_sharing_a_start_get_distinct_roles() -> None:
    a, b = "t" * 62 + "a", "t" * 62 + "b"
    roles = {tenant_role_name(a), tenant_role_name(b)}
    assert len(roles) == 2
    assert all(r.startswith(DEFAULT_ROLE_PREFIX + "t" * 40) for r in roles)


def test_a_role_name_needs_a_valid_schema_and_prefix() -> None:
    with pytest.raises(InvalidName, match="not a plain lower-case identifier"):
        tenant_role_name("Acme")
    with pytest.raises(InvalidName, match="role prefix"):
        tenant_role_name("acme", "Bad-Prefix")
