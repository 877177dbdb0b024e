"""Commands about tenants: ``create``, ``tenants``, ``drop``, ``rotate_role``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import psycopg
from sqlalchemy.engine import Connection

from .. import citus, dependents, planner, roles, seeds, steps
from ..config import Config
from ..creation import Finish, FinishError, create_tenant
from ..database import Database, rollback_quietly, run_script
from ..errors import MtmError, PublicMigrationsLocked, TenantError, UsageError, ValidationFailed
from ..failures import StepError, step_error
from ..identifiers import validate_domains, validate_schema_name
from ..ledger import PUBLIC, state_fingerprint
from ..locks import describe_holder, release_run_lock, try_run_lock
from ..migrations import MigrationSet, discover
from ..overview import matching
from ..plan import fingerprint, legacy_problems
from ..reference import refuse_for_create
from ..registry import Tenant, get_tenant, list_tenants, tenant_of_domain
from ..results import CreateResult, DropResult, RotateResult
from ..runner import Runner
from ..schemas import current_database, schema_exists
from ..tables import ensure_bootstrap
from ..tables import existing as _existing
from .base import session
from .migrate import refuse_problems

log = logging.getLogger("mtm.tenant")


def create(
    config: Config,
    schema: str,
    *,
    domains: Sequence[str] = (),
    name: str | None = None,
    migrate: bool = True,
    migrations: MigrationSet | None = None,
    role: bool = False,
    login: bool = False,
    password_file: str | Path | None = None,
    seed: bool = True,
) -> CreateResult:
    """Register a tenant, create its schema and bring it to head, in one transaction.

    With ``role``, that transaction also creates the tenant's PostgreSQL role (see
    ``mtm.roles``), which can use only this schema. With ``login`` too, the role can log
    in: its generated password is returned in the result, or written to
    ``password_file`` (mode 0600) and then not returned. The configured seed (``seed``
    key, ``mtm.seeds``) runs in that transaction after the migrations, unless ``seed``
    is false or ``migrate`` is (the seed needs the migrations' tables); commands that
    create a tenant from existing data (clone, import, an existing schema) pass
    ``seed=False``. Opens and closes its own connection; to create many tenants in a
    row, hold ``mtm.connect(config)``.
    """
    with Database(config, purpose="mtm create") as db:
        return create_in(
            db,
            schema,
            domains=domains,
            name=name,
            migrate=migrate,
            migrations=migrations,
            role=role,
            login=login,
            password_file=password_file,
            seed=seed,
        )


def create_in(
    db: Database,
    schema: str,
    *,
    domains: Sequence[str] = (),
    name: str | None = None,
    migrate: bool = True,
    migrations: MigrationSet | None = None,
    role: bool = False,
    login: bool = False,
    password_file: str | Path | None = None,
    seed: bool = True,
) -> CreateResult:
    """``create`` on one of ``db``'s kept connections.

    Public migrations still pending are applied first, under the run lock (or the
    create is refused, naming who holds it): tenant migrations may use public tables.

    Longer than most: its eight options take a line each, and every check of them comes
    before the connection is opened, so that bad input changes nothing.
    """
    config = db.config
    schema = validate_schema_name(schema)
    if login and not role:
        raise UsageError("--login makes the tenant's role able to log in: add --role")
    if password_file is not None and not login:
        raise UsageError("--password-file is where the login role's password goes: add --login")
    target = roles.check_password_file(password_file) if password_file is not None else None
    clean = validate_domains(domains)
    mset = migrations or discover(config.migrations_directory)
    pending = list(mset.tenant) if migrate else []
    for problem in legacy_problems(schema, pending):
        raise ValidationFailed(f"refusing to create: {problem} (nothing was changed)")
    for m in pending:
        if m.kind == "python":
            m.load()
    hook = seeds.load(config) if seed and migrate else None
    runner = Runner(config)
    with db.connection() as conn:
        ensure_bootstrap(conn, config)
        placement = citus.mode(conn, config).check()
        public = _public_first(runner, conn, mset, schema) if migrate else []
        refuse_for_create(conn, pending)
        refuse_taken(conn, config, schema, clean)
        password = roles.new_password() if login else None
        setup = _role_setup(conn, config, schema, password) if role else []
        inside = all(m.transactional for m in pending)
        finish = _seed_finish(hook, Tenant(schema, name, tuple(clean))) if inside else None
        try:
            result = create_tenant(
                runner,
                conn,
                schema,
                name,
                clean,
                pending,
                setup,
                finish=finish,
                sharding=placement.sharding_sql(),
            )
        except StepError as exc:
            _explain_create_failure(conn, config, schema, clean, exc)
        log.info(
            "created tenant %s",
            schema,
            extra={
                "event": "tenant.create",
                "schema": schema,
                "applied": len(result.applied),
                "seed": hook.spec if hook is not None else None,
                "distributed": placement.distributed,
                "duration_ms": round(1000 * result.seconds, 3),
            },
        )
        # Committed; a migration that runs outside a transaction (applied after the
        # commit) may still have failed.
        if not result.ok:
            raise MtmError(
                f"tenant {schema!r} was created, but migration {result.failed_migration} "
                f"failed after it: {result.error}; fix it and run 'mtm migrate'"
            )
        tenant = get_tenant(conn, config, schema)
        if hook is not None and finish is None and tenant is not None:
            _seed_after(conn, runner, hook, tenant)
    assert tenant is not None
    role_name = roles.role_for(config, schema) if role else None
    created = CreateResult(
        tenant, result.applied, result.seconds, role_name, public, password=password
    )
    if target is not None and password is not None:
        _hand_over(created, target, f"mtm role rotate {schema} --password-file {target}")
    return created


def _seed_finish(hook: seeds.Seed | None, tenant: Tenant) -> Finish | None:
    """The seed as the last work of the create's transaction."""
    if hook is None:
        return None
    return Finish(f"the seed {hook.spec}", lambda conn: hook.run(conn, tenant))


def _seed_after(conn: Connection, runner: Runner, hook: seeds.Seed, tenant: Tenant) -> None:
    """A tenant with a migration outside a transaction is seeded after the last one, in
    a transaction of its own: a failure there leaves the tenant, seeded by nothing."""
    try:
        seeds.reseed(conn, runner.config, hook, tenant, runner.settings.timeouts)
    except Exception as exc:
        raise MtmError(
            f"tenant {tenant.schema!r} was created, but its seed {hook.spec} failed after "
            f"the migrations: {step_error(exc, None).message} (nothing of the seed was kept); "
            f"fix it and run 'mtm seed {tenant.schema}'"
        ) from None


def _public_first(runner: Runner, conn: Connection, mset: MigrationSet, schema: str) -> list[str]:
    """Apply the pending public migrations under the run lock; their names."""
    config = runner.config
    if not mset.public:
        return []
    head = fingerprint((m.name, m.checksum) for m in mset.public)
    if state_fingerprint(conn, config, PUBLIC) == head:
        return []  # the usual case: one query
    tables = _existing(conn, config)
    if not planner.public_plan(conn, config, mset, tables).pending:
        return []
    if not try_run_lock(conn, config, wait=0, command="create"):
        raise PublicMigrationsLocked(
            f"tenant {schema!r} was not created: public migrations are pending and another "
            f"mtm run holds the migration lock: {describe_holder(conn, config)}; "
            "run 'mtm migrate' when it has finished, then create the tenant"
        )
    try:
        plan = planner.public_plan(conn, config, mset, tables)  # again, under the lock
        refuse_problems([plan])
        mset.load_all()
        result = runner.apply_plan(conn, plan, None)
        if not result.ok:
            raise MtmError(
                f"tenant {schema!r} was not created: public migration "
                f"{result.failed_migration} failed: {result.error}"
            )
        return result.applied
    finally:
        release_run_lock(conn, config)


def refuse_taken(
    conn: Connection,
    config: Config,
    schema: str,
    domains: list[str],
    *,
    name_hint: str = "",
    domain_hint: str = "",
) -> None:
    """Refuse a new tenant whose name, schema or a domain is taken (the owner named);
    the hints say what the calling command offers instead (``--as``, ``--domain``)."""
    if get_tenant(conn, config, schema) is not None:
        raise TenantError(f"tenant {schema!r} already exists{name_hint}")
    if schema_exists(conn, schema):
        raise TenantError(f"schema {schema!r} already exists in the database{name_hint}")
    for d in domains:
        owner = tenant_of_domain(conn, config, d)
        if owner is not None:
            raise TenantError(f"domain {d!r} already belongs to tenant {owner!r}{domain_hint}")


def _role_setup(
    conn: Connection, config: Config, schema: str, password: str | None = None
) -> list[str]:
    name = roles.role_for(config, schema)
    if roles.role_exists(conn, name):
        raise TenantError(
            f"role {name!r} already exists (roles are shared by every database of the "
            "server; set tenant_role_prefix to keep databases apart)"
        )
    verifier = roles.password_verifier(conn, name, password) if password is not None else None
    return roles.create_role_sql(config, schema, current_database(conn), verifier)


def _hand_over(result: CreateResult | RotateResult, target: Path, retry: str) -> None:
    """Move the password from the result into the file the user named."""
    assert result.password is not None
    try:
        roles.write_password_file(target, result.password)
    except OSError as exc:
        raise MtmError(
            f"role {result.role} got a new password, but writing it to {target} failed: "
            f"{exc.strerror or exc}; run '{retry}' to set another"
        ) from None
    result.password, result.password_file = None, target


def rotate_role(
    config: Config,
    schema: str,
    *,
    password_file: str | Path | None = None,
    login: bool = False,
) -> RotateResult:
    """Give a tenant's login role a new password (returned, or written to
    ``password_file`` with mode 0600). ``login`` lets a NOLOGIN tenant role log in."""
    schema = validate_schema_name(schema)
    target = roles.check_password_file(password_file) if password_file is not None else None
    with session(config, purpose="mtm role rotate") as (_, conn):
        if not _existing(conn, config)["registry"] or get_tenant(conn, config, schema) is None:
            raise TenantError(f"no tenant {schema!r} is registered")
        role, password = roles.rotate_password(conn, config, schema, enable_login=login)
    result = RotateResult(schema, role, password)
    if target is not None:
        _hand_over(result, target, f"mtm role rotate {schema} --password-file {target}")
    return result


def _explain_create_failure(
    conn: Connection, config: Config, schema: str, domains: list[str], error: StepError
) -> NoReturn:
    """Turn a failed create into the clearest message (a race may have taken a name)."""
    where = f"migration {error.migration}" if error.migration else "creating it"
    if isinstance(error, FinishError):
        where = error.stage
    if error.sqlstate == steps.TRANSACTION_ENDED:
        log.error(
            "creating tenant %s failed part way: %s",
            schema,
            error.message,
            extra={"event": "tenant.create_failed", "schema": schema, "error": error.message},
        )
        raise MtmError(
            f"tenant {schema!r} was left partly created: {where} ended mtm's transaction "
            "itself (COMMIT or ROLLBACK), so what ran before that is committed, the tenant "
            f"registered with it; check it, then remove it with 'mtm drop {schema} --yes'"
        )
    refuse_taken(conn, config, schema, domains)
    log.error(
        "creating tenant %s failed: %s",
        schema,
        error.message,
        extra={
            "event": "tenant.create_failed",
            "schema": schema,
            "migration": error.migration,
            "error": error.message,
        },
    )
    raise MtmError(
        f"tenant {schema!r} was not created: {where} failed: {error.message} "
        "(nothing was left behind)"
    )


def tenants(config: Config, *, match: str | None = None) -> list[Tenant]:
    """Every registered tenant with its domains (``match``: those whose name matches
    that shell glob)."""
    with session(config) as (_, conn):
        if not _existing(conn, config)["registry"]:
            return []
        return matching(list_tenants(conn, config), match)


def drop(
    config: Config, schema: str, *, yes: bool = False, cascade_outside: bool = False
) -> DropResult:
    """Drop a tenant's schema (with all its data) and its registry row; needs ``yes``.

    Refuses, naming them, while objects outside the schema depend on it (they would go
    with it), unless ``cascade_outside``.
    """
    if not isinstance(schema, str) or not schema:
        raise UsageError("name the tenant to drop")
    with session(config, purpose="mtm drop") as (_, conn):
        tenant = get_tenant(conn, config, schema) if _existing(conn, config)["registry"] else None
        if tenant is None:
            raise TenantError(f"no tenant {schema!r} is registered")
        if not yes:
            raise UsageError(
                f"refusing to drop tenant {schema!r} without --yes: this deletes schema "
                f"{schema!r} and all its data"
            )
        role = roles.owned_role(conn, config, schema)
        framed = steps.drop_framed(config, schema, roles.drop_role_sql(role) if role else ())
        try:
            run_script(conn, framed.head)
            outside = dependents.outside_dependents(conn, schema)
            if outside and not cascade_outside:
                raise UsageError(
                    f"refusing to drop tenant {schema!r}: {len(outside)} object(s) outside "
                    f"schema {schema!r} depend on it and would be dropped with it: "
                    f"{'; '.join(outside)}; change them first, or pass --cascade-outside "
                    "to drop them too (nothing was dropped)"
                )
            try:
                run_script(conn, framed.tail)
            except psycopg.Error as exc:  # e.g. the role holds privileges in another database
                if not role:
                    raise
                reason = str(exc).strip().splitlines()[0]
                raise TenantError(
                    f"tenant {schema!r} was not dropped: dropping its role {role!r} failed: "
                    f"{reason} (nothing was changed)"
                ) from None
        except BaseException:
            rollback_quietly(conn)
            raise
    log.info(
        "dropped tenant %s",
        schema,
        extra={"event": "tenant.drop", "schema": schema, "role": role},
    )
    return DropResult(schema, True, role, outside)
