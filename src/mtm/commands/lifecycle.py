"""Commands that change a tenant after its create: ``rename``, ``role_add``,
``role_remove``; and ``tenant_overview`` (what ``mtm tenants`` lists).

Each change is one transaction under the tenant's schema lock (a rename: under both
names' locks and the run lock), which checks again that the tenant is registered, so
that registry, schema, ledger, state row and role never disagree, even after a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from .. import clustercheck, roles
from ..config import Config
from ..database import rollback_quietly, run_script
from ..errors import LockHeld, MtmError, TenantError, UsageError, insufficient_privilege
from ..identifiers import validate_schema_name
from ..locks import describe_holder, release_run_lock, schema_lock_sql, try_run_lock
from ..overview import TenantOverview, overview, overview_page
from ..registry import NOT_REGISTERED, Tenant, expect_registered_sql, get_tenant
from ..renaming import rename_sql
from ..results import RenameResult, RoleResult
from ..schemas import current_database, schema_exists
from ..tables import existing
from .base import reading, session

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger("mtm.tenant")


def registered(conn: Connection, config: Config, schema: object) -> Tenant:
    """The registered tenant ``schema`` (a valid name), or refuse naming it."""
    name = validate_schema_name(schema)
    tenant = get_tenant(conn, config, name) if existing(conn, config)["registry"] else None
    if tenant is None:
        raise TenantError(f"no tenant {name!r} is registered")
    return tenant


def apply_change(conn: Connection, script: Sequence[str], failed: str) -> None:
    """Run one change transaction. On failure it is rolled back whole and said in one
    line starting with ``failed`` (a tenant gone meanwhile: a refusal)."""
    try:
        run_script(conn, script)
    except psycopg.Error as exc:
        rollback_quietly(conn)
        refused = insufficient_privilege(exc)
        if refused is not None:
            raise refused from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if exc.sqlstate == NOT_REGISTERED:
            raise TenantError(f"{failed}: {reason} (nothing was changed)") from None
        raise MtmError(f"{failed}: {reason} (nothing was changed)") from None
    except BaseException:
        rollback_quietly(conn)
        raise


def rename(config: Config, old: str, new: str) -> RenameResult:
    """Rename tenant ``old`` to ``new``: schema, registry row, domains, state row and the
    tenant role (with its marker), in one transaction under both names' locks.

    Refused while another mtm run holds the run lock (a migrate planned with the old
    name), naming the holder, and held for the rename so that no run starts meanwhile.
    Applications that cached the tenant under ``old`` keep using that name until their
    resolver's entry expires or is invalidated (docs/applications.md).
    """
    new = validate_schema_name(new)
    with session(config, purpose="mtm rename") as (_, conn):
        old = registered(conn, config, old).schema
        if new == old:
            raise UsageError(f"tenant {old!r} already has that name")
        if get_tenant(conn, config, new) is not None:
            raise TenantError(f"tenant {new!r} already exists")
        if schema_exists(conn, new):
            raise TenantError(f"schema {new!r} already exists in the database")
        old_role = roles.owned_role(conn, config, old)
        new_role = roles.role_for(config, new) if old_role else None
        role_sql: list[str] = []
        if old_role is not None and new_role is not None:
            if roles.role_exists(conn, new_role):
                raise TenantError(
                    f"tenant {old!r} was not renamed: its role would become {new_role!r}, "
                    "which already exists (roles are shared by every database of the server)"
                )
            role_sql = roles.rename_role_sql(
                old_role, new_role, current_database(conn), new, roles.can_login(conn, old_role)
            )
        if not try_run_lock(conn, config, wait=0, command="rename"):
            raise LockHeld(
                f"tenant {old!r} was not renamed: another mtm run holds the migration lock: "
                f"{describe_holder(conn, config)}; try again when it has finished"
            )
        try:
            apply_change(
                conn, rename_sql(config, old, new, role_sql), f"tenant {old!r} was not renamed"
            )
        finally:
            release_run_lock(conn, config)
    log.info(
        "renamed tenant %s to %s",
        old,
        new,
        extra={"event": "tenant.rename", "schema": new, "old_schema": old, "role": new_role},
    )
    return RenameResult(old, new, new_role, old_role)


def role_add(
    config: Config,
    schema: str,
    *,
    login: bool = False,
    password_file: str | Path | None = None,
) -> RoleResult:
    """Give an existing tenant the role ``create --role`` makes (``login``: one that
    logs in, its password returned or written to ``password_file``), with the grants
    that role would have on what the tenant already has: its tables and sequences
    (not the ledger), and default privileges for those to come."""
    if password_file is not None and not login:
        raise UsageError("--password-file is where the login role's password goes: add --login")
    target = roles.check_password_file(password_file) if password_file is not None else None
    with session(config, purpose="mtm role add") as (_, conn):
        schema = registered(conn, config, schema).schema
        role = roles.role_for(config, schema)
        if roles.owned_role(conn, config, schema) is not None:
            raise TenantError(f"tenant {schema!r} already has its role {role!r}")
        if not login:
            clustercheck.refuse_nologin_role(conn, schema, role)
        if roles.role_exists(conn, role):
            raise TenantError(
                f"role {role!r} already exists and is not tenant {schema!r}'s (roles are "
                "shared by every database of the server; set tenant_role_prefix to keep "
                "databases apart)"
            )
        password = roles.new_password() if login else None
        verifier = roles.password_verifier(conn, role, password) if password else None
        made = roles.create_role_sql(config, schema, current_database(conn), verifier)
        script = [
            "BEGIN",
            schema_lock_sql(schema),
            expect_registered_sql(config, schema),
            *made,
            *roles.existing_grants_sql(config, schema, role),
            "COMMIT",
        ]
        apply_change(conn, script, f"tenant {schema!r} got no role")
        roles.grant_registry_read(conn, config)
    log.info(
        "added role %s to tenant %s",
        role,
        schema,
        extra={"event": "tenant.role.add", "schema": schema, "role": role},
    )
    result = RoleResult(schema, role, True, password)
    if target is not None and password is not None:
        try:
            roles.write_password_file(target, password)
        except OSError as exc:
            raise MtmError(
                f"role {role} was added, but writing its password to {target} failed: "
                f"{exc.strerror or exc}; run 'mtm role rotate {schema} --password-file "
                f"{target}' to set another"
            ) from None
        result.password, result.password_file = None, target
    return result


def role_remove(config: Config, schema: str) -> RoleResult:
    """Drop the role mtm made for a tenant: its privileges and default privileges go
    with it. Refused, naming them, while it owns objects in this database (mtm would
    rather not guess whose they become)."""
    with session(config, purpose="mtm role remove") as (_, conn):
        schema = registered(conn, config, schema).schema
        role = roles.owned_role(conn, config, schema)
        name = roles.role_for(config, schema)
        if role is None and roles.role_exists(conn, name):
            raise TenantError(
                f"role {name!r} was not made by mtm for tenant {schema!r} in this database "
                "(its comment says otherwise); mtm leaves it alone"
            )
        if role is None:
            raise TenantError(f"tenant {schema!r} has no role")
        owned = roles.owned_objects(conn, role)
        if owned:
            raise TenantError(
                f"role {role!r} of tenant {schema!r} was not removed: it owns "
                f"{len(owned)} object(s) in this database: {'; '.join(owned)}; give them "
                "another owner (ALTER ... OWNER TO) or drop them first (nothing was changed)"
            )
        script = [
            "BEGIN",
            schema_lock_sql(schema),
            expect_registered_sql(config, schema),
            roles.owns_nothing_sql(role),
            *roles.drop_role_sql(role),
            "COMMIT",
        ]
        apply_change(conn, script, f"role {role!r} of tenant {schema!r} was not removed")
    log.info(
        "removed role %s of tenant %s",
        role,
        schema,
        extra={"event": "tenant.role.remove", "schema": schema, "role": role},
    )
    return RoleResult(schema, role, False)


def tenant_page(config: Config, limit: int) -> tuple[list[TenantOverview], int]:
    """The first ``limit`` tenants by name, as ``tenant_overview`` gives them, and how
    many tenants there are; reads only those tenants' rows."""
    with reading(config) as conn:
        if not existing(conn, config)["registry"]:
            return [], 0
        return overview_page(conn, config, limit)


def tenant_overview(config: Config, match: str | None = None) -> list[TenantOverview]:
    """Every registered tenant (``match``: a shell glob on its name) with its primary
    domain, where its ledger stands and its role."""
    with reading(config) as conn:
        if not existing(conn, config)["registry"]:
            return []
        return overview(conn, config, match)
