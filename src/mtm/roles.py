"""Tenant roles: a PostgreSQL role per tenant that can use only its own schema.

``mtm create --role`` makes ``<tenant_role_prefix><schema>`` (default ``mtm_tenant_``)
in the same transaction as the schema: ``NOLOGIN``, ``USAGE`` on the tenant's schema,
and default privileges so that every table and sequence the migration owner creates
there later (``mtm migrate``) is usable by the role (SELECT, INSERT, UPDATE, DELETE; on
sequences USAGE, SELECT, UPDATE). It gets nothing on other tenants' schemas, nor on
the ledger table, nor on public tables unless a public migration grants it (to PUBLIC
or to a group role the tenant roles belong to).

With ``--login`` the tenant role can log in itself, with a generated password: that is
the isolation boundary (credentials per tenant). Only the password's verifier (SCRAM,
computed by libpq here) is sent to the server, so the password is never in a statement,
a server log or an mtm log; mtm hands it to the user once (printed, or written to a
file of mode 0600) and ``mtm role rotate`` replaces it.

With ``tenant_role_member = "app"`` in the config, the role is also granted to ``app``
(the role the application logs in as), so the application can ``SET ROLE`` to it. Such
a member of every tenant role can switch into any of them: a safety net against
mistakes, not a boundary. ``app`` is also granted read access to what resolving a host
needs (USAGE on public, SELECT on the registry's tenants and domains tables).

Roles are cluster-wide, schemas are per database: mtm marks the roles it creates with
a comment naming the database and schema, and ``mtm drop`` drops a role only when that
comment says it belongs to the tenant being dropped.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from . import sqlrun
from .config import Config
from .database import rollback_quietly, run_script
from .errors import ConfigError, MtmError, TenantError, UsageError
from .identifiers import (
    do_block,
    quote_ident,
    quote_literal,
    tenant_role_name,
    validate_schema_name,
)
from .ledger import ledger_ref
from .locks import schema_lock_sql
from .registry import PUBLIC, domain_ref, tenant_ref
from .schemas import current_database
from .sqlrun import Conn

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger("mtm.tenant")


def role_for(config: Config, schema: str) -> str:
    """The name of ``schema``'s tenant role under ``config``'s ``tenant_role_prefix``."""
    return tenant_role_name(schema, config.tenant_role_prefix)


def role_marker(database: str, schema: str) -> str:
    """The comment mtm puts on a tenant role, and checks before dropping it."""
    return f"mtm tenant role: database {database} schema {schema}"


def create_role_sql(
    config: Config, schema: str, database: str, verifier: str | None = None
) -> list[str]:
    """Statements run inside the create transaction, after the schema and its ledger.

    The ledger is created before the default privileges, so the role cannot touch it.
    With a password ``verifier`` the role can log in, and its sessions in this database
    start in the tenant's schema.
    """
    schema = validate_schema_name(schema)
    role = quote_ident(role_for(config, schema))
    s = quote_ident(schema)
    member = (
        [f"GRANT {role} TO {quote_ident(config.tenant_role_member)}"]
        if config.tenant_role_member
        else []
    )
    login = (
        [
            f"CREATE ROLE {role} LOGIN PASSWORD {quote_literal(verifier)}",
            _login_search_path_sql(role, schema, database),
        ]
        if verifier is not None
        else [f"CREATE ROLE {role} NOLOGIN"]
    )
    return [
        *login,
        *member,
        f"COMMENT ON ROLE {role} IS {quote_literal(role_marker(database, schema))}",
        f"GRANT USAGE ON SCHEMA {s} TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} "
        f"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
    ]


def role_exists(conn: Conn, role: str) -> bool:
    sql = "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(r)s)"
    return bool(sqlrun.scalar(conn, sql, {"r": role}))


def owned_role(conn: Conn, config: Config, schema: str) -> str | None:
    """The tenant role of ``schema`` if it exists and mtm made it for this database."""
    role = role_for(config, schema)
    found = sqlrun.rows(
        conn,
        "SELECT shobj_description(oid, 'pg_authid'), current_database() FROM pg_roles "
        "WHERE rolname = %(r)s",
        {"r": role},
    )
    if not found:
        return None
    comment, database = found[0]
    return role if comment == role_marker(str(database), schema) else None


def drop_role_sql(role: str) -> list[str]:
    """Statements that remove a tenant role (inside the drop transaction).

    The user running mtm first grants itself the role: REASSIGN OWNED and DROP OWNED
    need the role's privileges, which a CREATEROLE user who is not a superuser does not
    hold over the roles it made (PostgreSQL 15: no membership; 16+: ADMIN without
    INHERIT). Then anything the role came to own in this database goes to the user
    running mtm, its remaining privileges here are revoked, and the role goes (with
    the membership). REASSIGN names that user rather than saying ``CURRENT_USER``:
    Citus 13.2 crashes the backend on a keyword target role (citusdata/citus#8745).
    """
    r = quote_ident(role)
    return [
        f"GRANT {r} TO CURRENT_USER",
        do_block(
            "BEGIN EXECUTE format('REASSIGN OWNED BY %I TO %I', "
            f"{quote_literal(role)}, current_user); END"
        ),
        f"DROP OWNED BY {r}",
        f"DROP ROLE {r}",
    ]


def existing_grants_sql(config: Config, schema: str, role: str) -> list[str]:
    """For a role added to a tenant that already has tables (``mtm role add``): what the
    default privileges of ``create_role_sql`` would have given it on each of them, and
    nothing on the ledger."""
    r, s = quote_ident(role), quote_ident(schema)
    return [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
        f"REVOKE ALL ON {ledger_ref(config, schema)} FROM {r}",
    ]


def can_login(conn: Conn, role: str) -> bool:
    sql = "SELECT rolcanlogin FROM pg_roles WHERE rolname = %(r)s"
    return bool(sqlrun.scalar(conn, sql, {"r": role}))


def owned_objects(conn: Conn, role: str) -> list[str]:
    """What ``role`` owns in this database, described by PostgreSQL (``table a.t``)."""
    rows = sqlrun.rows(
        conn,
        "SELECT pg_describe_object(classid, objid, objsubid) FROM pg_shdepend "
        "WHERE refclassid = 'pg_authid'::regclass AND deptype = 'o' "
        "AND refobjid = (SELECT oid FROM pg_roles WHERE rolname = %(r)s) "
        "AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "ORDER BY 1",
        {"r": role},
    )
    return [r[0] for r in rows]


def owns_nothing_sql(role: str) -> str:
    """Fail the transaction if ``role`` came to own something in this database since
    ``owned_objects`` said it owned nothing (it is checked again under the lock)."""
    message = quote_literal(f"role {role} now owns objects in this database")
    return do_block(
        "BEGIN IF EXISTS (SELECT 1 FROM pg_shdepend WHERE refclassid = 'pg_authid'::regclass "
        f"AND deptype = 'o' AND refobjid = (SELECT oid FROM pg_roles WHERE rolname = "
        f"{quote_literal(role)}) AND dbid = (SELECT oid FROM pg_database WHERE datname = "
        f"current_database())) THEN RAISE EXCEPTION {message}; END IF; END"
    )


def rename_role_sql(old: str, new: str, database: str, schema: str, login: bool) -> list[str]:
    """Statements that give a renamed tenant its role's new name and marker (inside the
    rename transaction). Privileges follow the role (they are kept by its oid); a login
    role's sessions in this database start in the new schema. PostgreSQL clears an MD5
    password on rename (SCRAM, the default, is kept)."""
    quoted = quote_ident(new)
    out = [
        f"ALTER ROLE {quote_ident(old)} RENAME TO {quoted}",
        f"COMMENT ON ROLE {quoted} IS {quote_literal(role_marker(database, schema))}",
    ]
    if login:
        out.append(_login_search_path_sql(quoted, schema, database))
    return out


# --- login roles: the per-tenant credentials -------------------------------------------


def _login_search_path_sql(quoted_role: str, schema: str, database: str) -> str:
    return (
        f"ALTER ROLE {quoted_role} IN DATABASE {quote_ident(database)} "
        f"SET search_path = {quote_ident(schema)}, public, pg_temp"
    )


def new_password() -> str:
    """A random password (256 bits, URL-safe, so it can go into a connection URL as is)."""
    return secrets.token_urlsafe(32)


def password_verifier(conn: Connection, role: str, password: str) -> str:
    """What the server stores for ``password`` (SCRAM-SHA-256 unless the server's
    ``password_encryption`` says otherwise), computed by libpq on this side."""
    verifier: bytes = sqlrun.driver(conn).pgconn.encrypt_password(password.encode(), role.encode())
    return verifier.decode()


def check_password_file(path: str | os.PathLike[str]) -> Path:
    """Refuse, before anything changes, a password file mtm could not write."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"--password-file {target} is a directory; name a file")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"--password-file {target}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--password-file {target}: folder {folder} is not writable")
    return target


def write_password_file(path: Path, password: str) -> None:
    """Write the password readable by its owner only (mode 0600), atomically: a file
    already there is replaced whole, never left half-written or more readable."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rotate_password(
    conn: Connection, config: Config, schema: str, *, enable_login: bool = False
) -> tuple[str, str]:
    """Give the login role of ``schema`` a new password; returns (role, password).

    Sessions already logged in keep running; new ones need the new password.
    ``enable_login`` turns a NOLOGIN tenant role (``create --role``) into a login role.
    """
    role = owned_role(conn, config, schema)
    if role is None:
        raise TenantError(
            f"tenant {schema!r} has no role made by mtm (create tenants with --role --login)"
        )
    logs_in = can_login(conn, role)
    if not logs_in and not enable_login:
        raise TenantError(
            f"role {role!r} of tenant {schema!r} cannot log in; add --login to let it "
            "log in with the new password"
        )
    password = new_password()
    verifier = password_verifier(conn, role, password)
    quoted = quote_ident(role)
    statements = [f"ALTER ROLE {quoted} LOGIN PASSWORD {quote_literal(verifier)}"]
    if not logs_in:
        statements.append(_login_search_path_sql(quoted, schema, current_database(conn)))
    database_error = None
    try:
        run_script(conn, ["BEGIN", *statements, "COMMIT"])
    except psycopg.Error as exc:
        rollback_quietly(conn)
        database_error = str(exc).strip().splitlines()[0]
    if database_error is not None:
        raise MtmError(
            f"the password of role {role!r} was not changed: {database_error} (the user "
            "running mtm needs CREATEROLE)"
        )
    log.info(
        "new password for tenant role %s",
        role,
        extra={"event": "tenant.role.rotate", "schema": schema, "role": role},
    )
    return role, password


# --- what the application role may read ------------------------------------------------


def grant_registry_read(conn: Connection, config: Config) -> None:
    """Let ``tenant_role_member`` read exactly what resolving a host needs: USAGE on the
    registry's schema and SELECT on its tenants and domains tables (nothing to write).

    One query when the grants are there already; otherwise they are made under the
    public schema's lock, so that concurrent commands do not GRANT at the same time.
    """
    member = config.tenant_role_member
    if not member:
        return
    exists, granted = sqlrun.rows(
        conn,
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(m)s), "
        "CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(m)s) THEN "
        "has_schema_privilege(%(m)s, %(s)s, 'USAGE') "
        "AND has_table_privilege(%(m)s, %(t)s, 'SELECT') "
        "AND has_table_privilege(%(m)s, %(d)s, 'SELECT') END",
        {"m": member, "s": PUBLIC, "t": tenant_ref(config), "d": domain_ref(config)},
    )[0]
    if not exists:
        raise ConfigError(
            f"tenant_role_member {member!r} is not a role of this server; create it "
            f"(CREATE ROLE {quote_ident(member)} LOGIN NOINHERIT PASSWORD '...') or remove "
            "the setting"
        )
    if granted:
        return
    m = quote_ident(member)
    script = [
        "BEGIN",
        schema_lock_sql(PUBLIC),
        f"GRANT USAGE ON SCHEMA {quote_ident(PUBLIC)} TO {m}",
        f"GRANT SELECT ON {tenant_ref(config)}, {domain_ref(config)} TO {m}",
        "COMMIT",
    ]
    database_error = None
    try:
        run_script(conn, script)
    except psycopg.Error as exc:
        rollback_quietly(conn)
        database_error = str(exc).strip().splitlines()[0]
    if database_error is not None:
        raise MtmError(
            f"could not let tenant_role_member {member!r} read the tenant registry: "
            f"{database_error}"
        )
