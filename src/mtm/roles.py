"""Tenant roles: a PostgreSQL role per tenant that can use only its own schema.

``mtm create --role`` makes ``<tenant_role_prefix><schema>`` (default ``mtm_tenant_``)
in the same transaction as the schema: ``NOLOGIN``, ``USAGE`` on the tenant's schema,
and default privileges so that every table and sequence the migration owner creates
there later (``mtm migrate``) is usable by the role (SELECT, INSERT, UPDATE, DELETE; on
sequences USAGE, SELECT, UPDATE). It gets nothing on other tenants' schemas, nor on
the ledger table, nor on public tables unless a public migration grants it (to PUBLIC
or to a group role the tenant roles belong to).

With ``tenant_role_member = "app"`` in the config, the role is also granted to ``app``
(the role the application logs in as), so the application can ``SET ROLE`` to it.

Roles are cluster-wide, schemas are per database: mtm marks the roles it creates with
a comment naming the database and schema, and ``mtm drop`` drops a role only when that
comment says it belongs to the tenant being dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .config import Config
from .identifiers import quote_ident, quote_literal, tenant_role_name, validate_schema_name


def role_for(config: Config, schema: str) -> str:
    """The name of ``schema``'s tenant role under ``config``'s ``tenant_role_prefix``."""
    return tenant_role_name(schema, config.tenant_role_prefix)


def role_marker(database: str, schema: str) -> str:
    """The comment mtm puts on a tenant role, and checks before dropping it."""
    return f"mtm tenant role: database {database} schema {schema}"


def create_role_sql(config: Config, schema: str, database: str) -> list[str]:
    """Statements run inside the create transaction, after the schema and its ledger.

    The ledger is created before the default privileges, so the role cannot touch it.
    """
    schema = validate_schema_name(schema)
    role = quote_ident(role_for(config, schema))
    s = quote_ident(schema)
    member = (
        [f"GRANT {role} TO {quote_ident(config.tenant_role_member)}"]
        if config.tenant_role_member
        else []
    )
    return [
        f"CREATE ROLE {role} NOLOGIN",
        *member,
        f"COMMENT ON ROLE {role} IS {quote_literal(role_marker(database, schema))}",
        f"GRANT USAGE ON SCHEMA {s} TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} "
        f"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
    ]


def role_exists(conn: Connection, role: str) -> bool:
    return bool(
        conn.execute(
            sa.text("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :r)"), {"r": role}
        ).scalar()
    )


def owned_role(conn: Connection, config: Config, schema: str) -> str | None:
    """The tenant role of ``schema`` if it exists and mtm made it for this database."""
    role = role_for(config, schema)
    comment = conn.execute(
        sa.text("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = :r"),
        {"r": role},
    ).first()
    if comment is None:
        return None
    database = conn.execute(sa.text("SELECT current_database()")).scalar()
    return role if comment[0] == role_marker(str(database), schema) else None


def drop_role_sql(role: str) -> list[str]:
    """Statements that remove a tenant role (inside the drop transaction).

    The user running mtm first grants itself the role: REASSIGN OWNED and DROP OWNED
    need the role's privileges, which a CREATEROLE user who is not a superuser does not
    hold over the roles it made (PostgreSQL 15: no membership; 16+: ADMIN without
    INHERIT). Then anything the role came to own in this database goes to the user
    running mtm, its remaining privileges here are revoked, and the role goes (with
    the membership).
    """
    r = quote_ident(role)
    return [
        f"GRANT {r} TO CURRENT_USER",
        f"REASSIGN OWNED BY {r} TO CURRENT_USER",
        f"DROP OWNED BY {r}",
        f"DROP ROLE {r}",
    ]
