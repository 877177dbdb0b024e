"""The tenant registry (the "mapper"): tenants and their domains, in the public schema.

Applications read it through ``MapperTable`` to find the tenant of a request's host.
Domains are stored normalised (lower case, no port, no trailing dot) and every value
travels as a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import sqlrun
from .config import Config, sqlalchemy_url
from .identifiers import do_block, legacy_idna_form, normalize_host, quote_ident, quote_literal
from .sqlrun import Conn

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import URL, Engine

PUBLIC = "public"

# Raised inside a transaction whose tenant is no longer registered (dropped or renamed
# since the command looked), by ``expect_registered_sql``.
NOT_REGISTERED = "MTM21"


@dataclass(frozen=True)
class Tenant:
    """A registry row: the tenant's schema, display name, domains (by name), timestamps
    and its primary domain (the one links and redirects should use; None without domains)."""

    schema: str
    name: str | None
    domains: tuple[str, ...]
    created_at: datetime | None = None
    updated_at: datetime | None = None
    primary_domain: str | None = None


def tenant_ref(config: Config) -> str:
    return f"{quote_ident(PUBLIC)}.{quote_ident(config.tenant_table)}"


def domain_ref(config: Config) -> str:
    return f"{quote_ident(PUBLIC)}.{quote_ident(config.domain_table)}"


def domains_insert_sql(config: Config, schema: str, domains: list[str]) -> str:
    """A new tenant's domains; the first one is its primary domain."""
    values = ", ".join(
        f"({quote_literal(d)}, {quote_literal(schema)}, {'true' if i == 0 else 'false'})"
        for i, d in enumerate(domains)
    )
    return f"INSERT INTO {domain_ref(config)} (domain, schema_name, is_primary) VALUES {values}"


def expect_registered_sql(config: Config, schema: str) -> str:
    """Fail the transaction (SQLSTATE MTM21) unless ``schema`` is a registered tenant:
    run under the schema's lock, it catches a tenant dropped or renamed meanwhile."""
    message = quote_literal(f"no tenant {schema!r} is registered")
    return do_block(
        f"BEGIN IF NOT EXISTS (SELECT 1 FROM {tenant_ref(config)} "
        f"WHERE schema_name = {quote_literal(schema)}) THEN RAISE EXCEPTION {message} "
        f"USING ERRCODE = '{NOT_REGISTERED}'; END IF; END"
    )


def touch_sql(config: Config, schema: str) -> str:
    """Mark a tenant's registry row as changed now."""
    return (
        f"UPDATE {tenant_ref(config)} SET updated_at = now() "
        f"WHERE schema_name = {quote_literal(schema)}"
    )


def _tenant_sql(config: Config, where: str = "") -> str:
    return (
        "SELECT t.schema_name, t.name, t.created_at, t.updated_at, "
        f"ARRAY(SELECT d.domain FROM {domain_ref(config)} d "
        "WHERE d.schema_name = t.schema_name ORDER BY d.domain), "
        f"(SELECT d.domain FROM {domain_ref(config)} d "
        "WHERE d.schema_name = t.schema_name AND d.is_primary) "
        f"FROM {tenant_ref(config)} t {where} ORDER BY t.schema_name"
    )


def _listing_sql(config: Config, where: str = "") -> str:
    """``_tenant_sql``'s rows for many tenants: the domains joined once, grouped,
    rather than two look-ups per tenant (60-90 ms of the server's time at 10,000)."""
    return (
        "SELECT t.schema_name, t.name, t.created_at, t.updated_at, "
        "coalesce(d.domains, '{}'), d.primary_domain "
        f"FROM {tenant_ref(config)} t LEFT JOIN (SELECT schema_name, "
        "array_agg(domain ORDER BY domain) AS domains, "
        "max(domain) FILTER (WHERE is_primary) AS primary_domain "  # one at most: an index
        f"FROM {domain_ref(config)} GROUP BY schema_name) d "
        f"ON d.schema_name = t.schema_name {where} ORDER BY t.schema_name"
    )


def by_domain_query(config: Config) -> sa.TextClause:
    """The one tenant-by-host query (parameters: ``by_domain_params``), one indexed
    query; ``MapperTable`` and the resolvers all use it.

    A domain stored in its IDNA 2003 form by an older mtm (``ss.example.com`` for
    ``ß.example.com``) is found too; the current form wins if both are registered.
    A SQLAlchemy statement: the resolvers run it on asyncio connections too.
    """
    import sqlalchemy as sa

    return sa.text(
        _tenant_sql(
            config,
            f"WHERE t.schema_name = (SELECT schema_name FROM {domain_ref(config)} "
            "WHERE domain IN (:d, :legacy) ORDER BY domain = :d DESC LIMIT 1)",
        )
    )


def by_domain_params(domain: str) -> dict[str, str]:
    """The parameters of ``by_domain_query`` for a normalised domain."""
    return {"d": domain, "legacy": legacy_idna_form(domain) or domain}


def tenant_from_row(row: Any) -> Tenant:
    """A row of the registry's queries as a Tenant."""
    return Tenant(row[0], row[1], tuple(row[4]), row[2], row[3], row[5])


def list_tenants(conn: Conn, config: Config, only: Sequence[str] | None = None) -> list[Tenant]:
    """Registered tenants with their domains (``only`` those), by schema name."""
    if only is None:
        return [tenant_from_row(r) for r in sqlrun.rows(conn, _listing_sql(config))]
    query = _listing_sql(config, "WHERE t.schema_name = ANY(%(only)s)")
    return [tenant_from_row(r) for r in sqlrun.rows(conn, query, {"only": list(only)})]


def first_schemas(conn: Conn, config: Config, limit: int) -> tuple[list[str], int]:
    """The first ``limit`` tenant schemas by name, and how many tenants there are, in
    one query: a page of a listing reads the rows it shows, not the whole registry."""
    rows = sqlrun.rows(
        conn,
        f"SELECT schema_name, count(*) OVER () FROM {tenant_ref(config)} "
        "ORDER BY schema_name LIMIT %(n)s",
        {"n": limit},
    )
    return [r[0] for r in rows], int(rows[0][1]) if rows else 0


def get_tenant(conn: Conn, config: Config, schema: str) -> Tenant | None:
    found = sqlrun.rows(conn, _tenant_sql(config, "WHERE t.schema_name = %(s)s"), {"s": schema})
    return tenant_from_row(found[0]) if found else None


def tenant_of_domain(conn: Conn, config: Config, domain: str) -> str | None:
    found = sqlrun.scalar(
        conn, f"SELECT schema_name FROM {domain_ref(config)} WHERE domain = %(d)s", {"d": domain}
    )
    return None if found is None else str(found)


def is_registered(conn: Conn, config: Config, schema: str) -> bool:
    sql = f"SELECT EXISTS (SELECT 1 FROM {tenant_ref(config)} WHERE schema_name = %(s)s)"
    return bool(sqlrun.scalar(conn, sql, {"s": schema}))


def registered_among(conn: Conn, config: Config, schemas: Sequence[str]) -> set[str]:
    """Which of ``schemas`` are registered tenants."""
    sql = f"SELECT schema_name FROM {tenant_ref(config)} WHERE schema_name = ANY(%(s)s)"
    return {r[0] for r in sqlrun.rows(conn, sql, {"s": list(schemas)})}


def tenant_schemas(conn: Conn, config: Config) -> list[str]:
    """Every registered tenant's schema name, in name order."""
    query = f"SELECT schema_name FROM {tenant_ref(config)} ORDER BY schema_name"
    return [r[0] for r in sqlrun.rows(conn, query)]  # at once, not row by row


def count_tenants(conn: Conn, config: Config) -> int:
    return int(sqlrun.scalar(conn, f"SELECT count(*) FROM {tenant_ref(config)}") or 0)


class MapperTable:
    """Look tenants up by host name, as an application does for each request.

    ``MapperTable(engine_or_url, config)``: an SQLAlchemy engine, or a database URL
    (``postgresql://...``, as text or a SQLAlchemy ``URL``) for which it makes its own
    engine (``dispose()`` closes it). ``lookup("Acme.Example.com:8443")`` returns the
    ``Tenant`` owning ``acme.example.com`` or None. Every call is one indexed query.
    """

    def __init__(self, engine: Engine | str | URL, config: Config | None = None) -> None:
        import sqlalchemy as sa
        from sqlalchemy.engine import URL, Engine

        self._owns_engine = not isinstance(engine, Engine)
        if isinstance(engine, URL):
            engine = engine.render_as_string(hide_password=False)
        if isinstance(engine, str):
            engine = sa.create_engine(sqlalchemy_url(engine), pool_pre_ping=True)
        if not isinstance(engine, Engine):
            raise TypeError(
                f"MapperTable needs an SQLAlchemy Engine or a database URL, "
                f"got {type(engine).__name__}"
            )
        self.engine = engine
        self.config = config or Config()

    def dispose(self) -> None:
        """Close the connections of the engine made from a URL (not of one passed in)."""
        if self._owns_engine:
            self.engine.dispose()

    def lookup(self, host: str) -> Tenant | None:
        domain = normalize_host(host)
        if not domain:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(by_domain_query(self.config), by_domain_params(domain)).first()
        return tenant_from_row(row) if row else None

    def get(self, schema: str) -> Tenant | None:
        with self.engine.connect() as conn:
            return get_tenant(conn, self.config, schema)

    def tenants(self) -> list[Tenant]:
        with self.engine.connect() as conn:
            return list_tenants(conn, self.config)
