"""One plain function per command. The CLI only parses options, calls these and renders.

Each takes a ``Config`` first and returns a result object; applications and deploy
scripts call them directly (``mtm.migrate(config)``). Expected failures raise
``MtmError`` subclasses with one clear message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import database, roles
from .config import CONFIG_FILE, Config
from .database import connect, create_engine, run_script
from .embedded import EmbeddedServer, EmbeddedStatus
from .errors import ConfigError, MtmError, TenantError, UsageError, ValidationFailed
from .identifiers import quote_ident, quote_literal, validate_domain, validate_schema_name
from .ledger import (
    PUBLIC,
    AppliedMigration,
    existing_ledgers,
    ledger_ddl,
    ledger_ref,
    read_history,
    read_ledgers,
    state_ddl,
    state_delete_sql,
    state_ref,
    state_upsert_sql,
)
from .migrations import Migration, MigrationSet, Namespace, discover
from .plan import (
    SchemaPlan,
    fingerprint,
    plan_from_ledger,
    plan_from_prefix,
    prefix_fingerprints,
    revert_range,
)
from .registry import (
    Tenant,
    domain_ref,
    get_tenant,
    list_tenants,
    registry_ddl,
    tenant_of_domain,
    tenant_ref,
)
from .runner import (
    FleetOutcome,
    NoProgress,
    Progress,
    Runner,
    SchemaResult,
    Settings,
    StepError,
)

# --- sessions and bootstrap ------------------------------------------------------------


@contextmanager
def _session(
    config: Config, *, pool_size: int = 1, purpose: str = "mtm", shared: bool = False
) -> Iterator[tuple[Engine, Connection]]:
    """An engine and a connection for one command; ``shared`` keeps the connection for
    the next call in this process (``database.shared_engine``)."""
    if shared:
        engine = database.shared_engine(config, purpose=purpose)
    else:
        engine = create_engine(config, pool_size=pool_size, purpose=purpose)
    try:
        with connect(engine) as conn:
            yield engine, conn
    finally:
        if not shared:
            engine.dispose()


def _existing(conn: Connection, config: Config) -> dict[str, bool]:
    """Which of mtm's public tables exist; refuses a registry table mtm did not make."""
    row = conn.execute(
        sa.text(
            "SELECT to_regclass(:t) IS NOT NULL, to_regclass(:s) IS NOT NULL, "
            "to_regclass(:l) IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute "
            "WHERE attrelid = to_regclass(:t) AND attname = 'schema_name' AND NOT attisdropped)"
        ),
        {"t": tenant_ref(config), "s": state_ref(config), "l": ledger_ref(config, PUBLIC)},
    ).one()
    if row[0] and not row[3]:
        # e.g. the original multi-tenant-migrate's mapper table (id, domain, schema, ...)
        raise ConfigError(
            f"table {tenant_ref(config)} exists but is not an mtm tenant registry (it has no "
            "schema_name column); set tenant_table in the config to another name"
        )
    return {"registry": row[0], "state": row[1], "ledger": row[2]}


def ensure_bootstrap(conn: Connection, config: Config) -> None:
    """Create the registry, the state table and the public ledger if any is missing."""
    if all(_existing(conn, config).values()):
        return
    statements = [*registry_ddl(config), state_ddl(config), ledger_ddl(config, PUBLIC)]
    run_script(
        conn,
        "BEGIN;\n"
        + database.schema_lock_sql(PUBLIC)
        + ";\n"
        + ";\n".join(statements)
        + ";\nCOMMIT",
    )


def _settings(
    config: Config, lock_timeout: str | None, statement_timeout: str | None, retries: int | None
) -> Settings:
    merged = Config(
        root=config.root,
        database_url=config.database_url,
        tenant_table=config.tenant_table,
        migrations_table=config.migrations_table,
        lock_timeout=lock_timeout if lock_timeout is not None else config.lock_timeout,
        statement_timeout=(
            statement_timeout if statement_timeout is not None else config.statement_timeout
        ),
        retries=retries if retries is not None else config.retries,
    )  # built only to validate the overrides the same way as the config file
    return Settings(merged.lock_timeout, merged.statement_timeout, merged.retries)


# --- init and new ----------------------------------------------------------------------

CONFIG_TEMPLATE = """\
# mtm configuration. Every key is optional; the values shown are the defaults.

# Where the database is. With neither database_url nor the db_* keys, mtm runs an
# embedded PostgreSQL with its data in .mtm/pgdata beside this file.
# The MTM_DATABASE_URL environment variable overrides both.
# database_url = "postgresql://user:password@localhost:5432/app"
# db_user = "app"
# db_password = "secret"
# db_name = "app"
# db_host = "localhost"
# db_port = 5432

# The registry of tenants in the public schema (and <tenant_table>_domains beside it).
tenant_table = "tenants"

# How the public schema is shown in status tables.
public_schema_display_name = "*PUBLIC"

# Migration files: {dir}/public/ and {dir}/tenant/, relative to this file.
migrations_directory = "migrations"

# The ledger table of applied migrations, one in every schema.
migrations_table = "mtm_migrations"

# Tenants migrated at once, each on its own connection.
jobs = 4

# Each migration gives up waiting for a lock after this long (then retries), so DDL
# never queues behind a long query and blocks the application.
lock_timeout = "5s"
retries = 2
# statement_timeout = "5min"
"""


@dataclass
class InitResult:
    config_path: Path
    created: list[Path]


def init(directory: str | Path = ".") -> InitResult:
    """Write a commented mtm.toml and the migrations folders; never overwrite a config."""
    root = Path(directory).resolve()
    config_path = root / CONFIG_FILE
    if config_path.exists():
        raise ConfigError(f"{config_path} already exists; mtm init does not overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    created = [config_path]
    config_path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
    for ns in ("public", "tenant"):
        folder = root / "migrations" / ns
        if not folder.exists():
            folder.mkdir(parents=True)
            created.append(folder)
    gitignore = root / ".mtm" / ".gitignore"
    gitignore.parent.mkdir(exist_ok=True)
    gitignore.write_text("*\n", encoding="utf-8")
    return InitResult(config_path, created)


PY_TEMPLATE = '''"""{message}"""

import sqlalchemy as sa  # noqa: F401


def up(op):
    pass


def down(op):
    pass
'''

SQL_TEMPLATE = """-- {message}

-- mtm:down
"""


def new(
    config: Config, namespace: str, message: str, *, sql: bool = False, now: datetime | None = None
) -> Path:
    """Write a new migration file named with a UTC timestamp and a slug of the message."""
    if namespace not in ("public", "tenant"):
        raise UsageError(f"namespace must be public or tenant, got {namespace!r}")
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:60]
    if not slug:
        raise UsageError("the message must contain letters or digits")
    directory = config.migrations_directory
    if not directory.is_dir():
        raise ConfigError(f"migrations directory {directory} does not exist (run 'mtm init')")
    moment = now or datetime.now(UTC)
    ext = ".sql" if sql else ".py"
    flat = not (directory / namespace).is_dir() and any(
        p.name.startswith(("public:", "tenant:")) for p in directory.iterdir()
    )
    if flat:  # the original tool's layout: tenant:1546110701000-message.py
        stamp = str(int(moment.timestamp() * 1000))
        path = directory / f"{namespace}:{stamp}-{slug.replace('_', '-')}{ext}"
    else:
        (directory / namespace).mkdir(exist_ok=True)
        path = directory / namespace / f"{moment.strftime('%Y%m%d%H%M%S')}_{slug}{ext}"
    if path.exists():
        raise UsageError(f"{path} already exists")
    template = SQL_TEMPLATE if sql else PY_TEMPLATE
    path.write_text(template.format(message=message.replace('"""', "'''")), encoding="utf-8")
    return path


# --- tenants ---------------------------------------------------------------------------


@dataclass
class CreateResult:
    tenant: Tenant
    applied: list[str]
    seconds: float
    role: str | None = None


def create(
    config: Config,
    schema: str,
    *,
    domains: Sequence[str] = (),
    name: str | None = None,
    migrate: bool = True,
    migrations: MigrationSet | None = None,
    role: bool = False,
) -> CreateResult:
    """Register a tenant, create its schema and bring it to head, in one transaction.

    With ``role``, that transaction also creates the tenant's PostgreSQL role (see
    ``mtm.roles``), which can use only this schema.
    """
    schema = validate_schema_name(schema)
    clean: list[str] = []
    for d in domains:
        host = validate_domain(d)
        if host not in clean:
            clean.append(host)
    mset = migrations or discover(config.migrations_directory)
    pending = list(mset.tenant) if migrate else []
    for m in pending:
        if m.kind == "python":
            m.load()
    with _session(config, purpose="mtm create", shared=True) as (engine, conn):
        ensure_bootstrap(conn, config)
        _refuse_existing(conn, config, schema, clean)
        setup = _role_setup(conn, config, schema) if role else []
        runner = Runner(engine, config)
        try:
            result = runner.create_tenant(conn, schema, name, clean, pending, setup)
        except StepError as exc:
            _explain_create_failure(conn, config, schema, clean, exc)
        # Committed; a migration that runs outside a transaction (applied after the
        # commit) may still have failed.
        if not result.ok:
            raise MtmError(
                f"tenant {schema!r} was created, but migration {result.failed_migration} "
                f"failed after it: {result.error}; fix it and run 'mtm migrate'"
            )
        tenant = get_tenant(conn, config, schema)
    assert tenant is not None
    role_name = roles.role_for(config, schema) if role else None
    return CreateResult(tenant, result.applied, result.seconds, role_name)


def _refuse_existing(conn: Connection, config: Config, schema: str, domains: list[str]) -> None:
    if get_tenant(conn, config, schema) is not None:
        raise TenantError(f"tenant {schema!r} already exists")
    exists = conn.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": schema}
    ).scalar()
    if exists:
        raise TenantError(f"schema {schema!r} already exists in the database")
    for d in domains:
        owner = tenant_of_domain(conn, config, d)
        if owner is not None:
            raise TenantError(f"domain {d!r} already belongs to tenant {owner!r}")


def _role_setup(conn: Connection, config: Config, schema: str) -> list[str]:
    name = roles.role_for(config, schema)
    if roles.role_exists(conn, name):
        raise TenantError(
            f"role {name!r} already exists (roles are shared by every database of the "
            "server; set tenant_role_prefix to keep databases apart)"
        )
    database = str(conn.execute(sa.text("SELECT current_database()")).scalar())
    return roles.create_role_sql(config, schema, database)


def _explain_create_failure(
    conn: Connection, config: Config, schema: str, domains: list[str], error: StepError
) -> NoReturn:
    """Turn a failed create into the clearest message (a race may have taken a name)."""
    _refuse_existing(conn, config, schema, domains)
    where = f"migration {error.migration}" if error.migration else "creating it"
    raise MtmError(
        f"tenant {schema!r} was not created: {where} failed: {error.message} "
        "(nothing was left behind)"
    )


def tenants(config: Config) -> list[Tenant]:
    """Every registered tenant with its domains."""
    with _session(config) as (_, conn):
        if not _existing(conn, config)["registry"]:
            return []
        return list_tenants(conn, config)


@dataclass
class DropResult:
    schema: str
    dropped: bool
    role: str | None = None


def drop(config: Config, schema: str, *, yes: bool = False) -> DropResult:
    """Drop a tenant's schema (with all its data) and its registry row; needs ``yes``."""
    if not isinstance(schema, str) or not schema:
        raise UsageError("name the tenant to drop")
    with _session(config, purpose="mtm drop") as (_, conn):
        tenant = get_tenant(conn, config, schema) if _existing(conn, config)["registry"] else None
        if tenant is None:
            raise TenantError(f"no tenant {schema!r} is registered")
        if not yes:
            raise UsageError(
                f"refusing to drop tenant {schema!r} without --yes: this deletes schema "
                f"{schema!r} and all its data"
            )
        role = roles.owned_role(conn, config, schema)
        role_sql = "".join(f"{s};\n" for s in roles.drop_role_sql(role)) if role else ""
        script = (
            "BEGIN;\n" + database.schema_lock_sql(schema) + ";\n"
            f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE;\n"
            f"DELETE FROM {tenant_ref(config)} "
            f"WHERE schema_name = {quote_literal(schema)};\n"
            f"{state_delete_sql(config, schema)};\n{role_sql}COMMIT"
        )
        if not role:
            run_script(conn, script)
        else:
            try:
                run_script(conn, script)
            except psycopg.Error as exc:  # e.g. the role holds privileges in another database
                database.rollback_quietly(conn)
                reason = str(exc).strip().splitlines()[0]
                raise TenantError(
                    f"tenant {schema!r} was not dropped: dropping its role {role!r} failed: "
                    f"{reason} (nothing was changed)"
                ) from None
    return DropResult(schema, True, role)


# --- planning ----------------------------------------------------------------------------


def _tenant_rows(
    conn: Connection, config: Config, only: Sequence[str] | None, not_at: str | None = None
) -> list[tuple[str, str | None]]:
    """(schema, fingerprint) of registered tenants; ``not_at`` keeps those not at that
    fingerprint, which is how a run with nothing to do costs one query."""
    ex = _existing(conn, config)
    if not ex["registry"]:
        if only:
            raise TenantError(f"no tenant {only[0]!r} is registered")
        return []
    where: list[str] = []
    params: dict[str, object] = {}
    if only:
        known = set(
            conn.execute(
                sa.text(
                    f"SELECT schema_name FROM {tenant_ref(config)} WHERE schema_name = ANY(:only)"
                ),
                {"only": list(only)},
            ).scalars()
        )
        missing = [s for s in only if s not in known]
        if missing:
            raise TenantError(f"no tenant {missing[0]!r} is registered")
        where.append("t.schema_name = ANY(:only)")
        params["only"] = list(only)
    if not_at is not None and ex["state"]:
        where.append("s.fingerprint IS DISTINCT FROM :fp")
        params["fp"] = not_at
    join = (
        f"LEFT JOIN {state_ref(config)} s ON s.schema_name = t.schema_name" if ex["state"] else ""
    )
    fp = "s.fingerprint" if ex["state"] else "NULL"
    sql = (
        f"SELECT t.schema_name, {fp} FROM {tenant_ref(config)} t {join} "
        + ("WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY t.schema_name"
    )
    return [(r[0], r[1]) for r in conn.execute(sa.text(sql), params)]


def _plans(
    conn: Connection,
    config: Config,
    migrations: list[Migration],
    namespace: Namespace,
    rows: Sequence[tuple[str, str | None]],
    *,
    allow_out_of_order: bool = False,
) -> list[SchemaPlan]:
    """Plans from fingerprints where they match a prefix of the files, else from ledgers."""
    prefixes = prefix_fingerprints(migrations)
    plans: dict[str, SchemaPlan] = {}
    slow: list[str] = []
    for schema, fp in rows:
        k = prefixes.get(fp) if fp is not None else None
        if k is None:
            slow.append(schema)
        else:
            plans[schema] = plan_from_prefix(schema, namespace, migrations, k)
    if slow:
        ledgers = read_ledgers(conn, config, slow)
        for schema in slow:
            plans[schema] = plan_from_ledger(
                schema,
                namespace,
                migrations,
                ledgers[schema],
                allow_out_of_order=allow_out_of_order,
            )
    return [plans[s] for s, _ in rows]


def _public_plan(
    conn: Connection, config: Config, mset: MigrationSet, *, allow_out_of_order: bool = False
) -> SchemaPlan:
    ledgers = read_ledgers(conn, config, [PUBLIC])
    return plan_from_ledger(
        PUBLIC, "public", mset.public, ledgers[PUBLIC], allow_out_of_order=allow_out_of_order
    )


def _replanner(config: Config, mset: MigrationSet, allow_out_of_order: bool):  # type: ignore[no-untyped-def]
    def replan(conn: Connection, schema: str, namespace: Namespace) -> SchemaPlan:
        ledger = read_ledgers(conn, config, [schema])[schema]
        return plan_from_ledger(
            schema, namespace, mset.of(namespace), ledger, allow_out_of_order=allow_out_of_order
        )

    return replan


def _refuse_problems(plans: Sequence[SchemaPlan]) -> None:
    problems = [p for plan in plans for p in plan.problems]
    if problems:
        shown = problems[:20]
        more = (
            f"\n... and {len(problems) - 20} more (see 'mtm validate')"
            if len(problems) > 20
            else ""
        )
        raise ValidationFailed(
            "refusing to migrate: applied migrations disagree with the "
            "files:\n  " + "\n  ".join(shown) + more
        )


# --- migrate -----------------------------------------------------------------------------


@dataclass
class MigrateResult:
    """What a migrate run did (or, with dry_run, would do)."""

    dry_run: bool
    public: SchemaResult | None
    public_plan: SchemaPlan | None
    tenant_plans: list[SchemaPlan]
    tenants_total: int
    outcome: FleetOutcome
    seconds: float

    @property
    def failures(self) -> list[SchemaResult]:
        out = list(self.outcome.failures)
        if self.public is not None and not self.public.ok:
            out.insert(0, self.public)
        return out

    @property
    def ok(self) -> bool:
        return (
            not self.failures
            and not self.outcome.interrupted
            and not self.outcome.connection_errors
        )

    @property
    def steps(self) -> int:
        return self.outcome.steps + (len(self.public.applied) if self.public else 0)


def migrate(
    config: Config,
    *,
    tenants: Sequence[str] | None = None,
    dry_run: bool = False,
    jobs: int | None = None,
    continue_on_error: bool = False,
    allow_out_of_order: bool = False,
    lock_wait: float = 0.0,
    lock_timeout: str | None = None,
    statement_timeout: str | None = None,
    retries: int | None = None,
    progress: Progress | None = None,
) -> MigrateResult:
    """Public migrations first, then every tenant's pending ones on ``jobs`` connections.

    Refuses to start if any applied migration disagrees with its file. Each step is its
    own transaction; after a failure no new tenant starts unless ``continue_on_error``.
    """
    started = time.perf_counter()
    jobs = config.jobs if jobs is None else jobs
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    settings = _settings(config, lock_timeout, statement_timeout, retries)
    mset = discover(config.migrations_directory)
    mset.load_all()
    only = [validate_schema_name(t) for t in tenants] if tenants else None
    progress = progress or NoProgress()
    head = fingerprint((m.name, m.checksum) for m in mset.tenant)
    with _session(config, pool_size=jobs, purpose="mtm migrate") as (engine, conn):
        if not dry_run:
            database.acquire_run_lock(conn, config, wait=lock_wait, command="migrate")
        try:
            if not dry_run:
                ensure_bootstrap(conn, config)
            public_plan = (
                _public_plan(conn, config, mset, allow_out_of_order=allow_out_of_order)
                if _existing(conn, config)["ledger"] or not dry_run
                else plan_from_ledger(PUBLIC, "public", mset.public, [])
            )
            rows = _tenant_rows(conn, config, only, not_at=head)
            total = _count_tenants(conn, config) if only is None else len(only)
            every = _plans(
                conn, config, mset.tenant, "tenant", rows, allow_out_of_order=allow_out_of_order
            )
            plans = [p for p in every if not p.at_head]
            _refuse_problems([public_plan, *plans])
            if not dry_run:
                # At head, yet its summary said otherwise (or was missing): rewrite it,
                # under each schema's lock so a concurrent down cannot interleave.
                stale = [p.schema for p in every if p.at_head]
                for i in range(0, len(stale), 200):
                    run_script(
                        conn,
                        "BEGIN;\n"
                        + "".join(
                            f"{database.schema_lock_sql(s)};\n"
                            f"{state_upsert_sql(config, s, 'tenant')};\n"
                            for s in stale[i : i + 200]
                        )
                        + "COMMIT",
                    )
            outcome = FleetOutcome()
            if dry_run:
                return MigrateResult(
                    True, None, public_plan, plans, total, outcome, time.perf_counter() - started
                )
            runner = Runner(
                engine,
                config,
                settings,
                progress,
                replan=_replanner(config, mset, allow_out_of_order),
            )
            progress.begin(
                len(plans) + (1 if public_plan.pending else 0),
                len(public_plan.pending) + sum(len(p.pending) for p in plans),
            )
            public_result = None
            try:
                if public_plan.pending:
                    public_result = runner.apply_plan(conn, public_plan, None)
                if public_result is None or public_result.ok:
                    outcome = runner.run_fleet(
                        plans, jobs=jobs, continue_on_error=continue_on_error
                    )
                else:
                    outcome.not_started = len(plans)
            finally:
                progress.end()
            return MigrateResult(
                False,
                public_result,
                public_plan,
                plans,
                total,
                outcome,
                time.perf_counter() - started,
            )
        finally:
            if not dry_run:
                try:
                    database.release_run_lock(conn, config)
                except sa.exc.DBAPIError:
                    pass  # the connection is gone, and the lock with it


def _count_tenants(conn: Connection, config: Config) -> int:
    if not _existing(conn, config)["registry"]:
        return 0
    return int(conn.execute(sa.text(f"SELECT count(*) FROM {tenant_ref(config)}")).scalar() or 0)


# --- status ------------------------------------------------------------------------------


@dataclass
class SchemaStatus:
    schema: str
    namespace: Namespace
    name: str | None
    domains: tuple[str, ...]
    applied: int
    total: int
    last_applied: str | None
    pending: list[str]
    problems: list[str]

    @property
    def at_head(self) -> bool:
        return not self.pending and not self.problems


@dataclass
class StatusResult:
    public: SchemaStatus
    tenants: list[SchemaStatus]
    total_tenant_migrations: int
    display_name: str = "*PUBLIC"

    @property
    def pending(self) -> bool:
        return any(not s.at_head for s in [self.public, *self.tenants])

    def groups(self) -> list[tuple[int, int, tuple[str, ...], bool]]:
        """Tenants grouped by position: (count, applied, pending names, has problems)."""
        counts: dict[tuple[int, tuple[str, ...], bool], int] = {}
        for t in self.tenants:
            key = (t.applied, tuple(t.pending), bool(t.problems))
            counts[key] = counts.get(key, 0) + 1
        return sorted(
            ((n, k[0], k[1], k[2]) for k, n in counts.items()), key=lambda g: (-g[1], g[2])
        )


def status(config: Config, *, tenants: Sequence[str] | None = None) -> StatusResult:
    """Where every schema stands: applied/total, last applied, pending, problems.

    One query for all tenants (their fingerprints); ledgers are read only for schemas
    whose fingerprint matches no prefix of the files.
    """
    mset = discover(config.migrations_directory)
    only = [validate_schema_name(t) for t in tenants] if tenants else None
    with _session(config) as (_, conn):
        ex = _existing(conn, config)
        public_plan = (
            _public_plan(conn, config, mset)
            if ex["ledger"]
            else plan_from_ledger(PUBLIC, "public", mset.public, [])
        )
        rows = _tenant_rows(conn, config, only)
        plans = _plans(conn, config, mset.tenant, "tenant", rows)
        info: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        if rows:
            sql = (
                f"SELECT t.schema_name, t.name, ARRAY(SELECT d.domain FROM {domain_ref(config)} "
                "d WHERE d.schema_name = t.schema_name ORDER BY d.domain) "
                f"FROM {tenant_ref(config)} t"
                + (" WHERE t.schema_name = ANY(:only)" if only else "")
            )
            for r in conn.execute(sa.text(sql), {"only": only} if only else {}):
                info[r[0]] = (r[1], tuple(r[2]))
    return StatusResult(
        public=_schema_status(public_plan, None, ()),
        tenants=[_schema_status(p, *info.get(p.schema, (None, ()))) for p in plans],
        total_tenant_migrations=len(mset.tenant),
        display_name=config.public_schema_display_name,
    )


def _schema_status(plan: SchemaPlan, name: str | None, domains: tuple[str, ...]) -> SchemaStatus:
    return SchemaStatus(
        plan.schema,
        plan.namespace,
        name,
        domains,
        plan.applied,
        plan.total,
        plan.last_applied,
        [m.name for m in plan.pending],
        plan.problems,
    )


# --- down --------------------------------------------------------------------------------


@dataclass
class DownResult:
    results: list[SchemaResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def down(
    config: Config,
    *,
    tenants: Sequence[str] | None = None,
    all_tenants: bool = False,
    public: bool = False,
    steps: int | None = None,
    to: str | None = None,
    progress: Progress | None = None,
) -> DownResult:
    """Revert the newest applied migrations of the chosen schemas, newest first.

    Everything is checked before anything changes: each migration in the range must
    still have its file, unedited, with a down.
    """
    chosen = sum([bool(tenants), all_tenants, public])
    if chosen != 1:
        raise UsageError("choose exactly one of --tenant SCHEMA, --all-tenants or --public")
    if steps is not None and to is not None:
        raise UsageError("give --steps or --to, not both")
    if steps is not None and steps < 1:
        raise UsageError("--steps must be at least 1")
    mset = discover(config.migrations_directory)
    with _session(config, purpose="mtm down") as (engine, conn):
        targets: list[tuple[str, Namespace]]
        if public:
            targets = [(PUBLIC, "public")]
        else:
            only = [validate_schema_name(t) for t in tenants] if tenants else None
            targets = [(s, "tenant") for s, _ in _tenant_rows(conn, config, only)]
        ledgers = _ordered_ledgers(conn, config, [s for s, _ in targets])
        work: list[tuple[str, Namespace, list[Migration], list[tuple[str, str]]]] = []
        problems: list[str] = []
        for schema, ns in targets:
            applied = ledgers.get(schema, [])
            try:
                names = revert_range([a.name for a in applied], steps=steps, to=to)
            except ValueError as exc:
                problems.append(f"{schema}: {exc}")
                continue
            checksums = {a.name: a.checksum for a in applied}
            migrations = []
            for name in names:
                m = mset.find(ns, name)
                if m is None:
                    problems.append(f"{schema}: migration {name} has no file to revert it with")
                elif m.checksum != checksums[name]:
                    problems.append(f"{schema}: migration {name} was edited after it was applied")
                elif not m.has_down:
                    problems.append(f"{schema}: migration {name} has no down")
                else:
                    migrations.append(m)
            work.append((schema, ns, migrations, [(a.name, a.checksum) for a in applied]))
        if problems:
            raise ValidationFailed("refusing to revert anything:\n  " + "\n  ".join(problems[:20]))
        runner = Runner(engine, config, progress=progress)
        results = []
        for schema, ns, migrations, pairs in work:
            if not migrations:
                continue
            tenant = schema if ns == "tenant" else None
            res = runner.revert(conn, schema, ns, migrations, tenant, pairs)
            results.append(res)
            if not res.ok:
                break
    return DownResult(results)


def _ordered_ledgers(
    conn: Connection, config: Config, schemas: Sequence[str]
) -> dict[str, list[AppliedMigration]]:
    present = existing_ledgers(conn, config, schemas)
    return {s: list(reversed(read_history(conn, config, s))) for s in schemas if s in present}


# --- history -----------------------------------------------------------------------------


def history(
    config: Config, *, tenant: str | None = None, public: bool = False
) -> list[AppliedMigration]:
    """The ledger of one schema, oldest first."""
    if bool(tenant) == public:
        raise UsageError("choose one of --tenant SCHEMA or --public")
    schema = PUBLIC if public else validate_schema_name(tenant)
    with _session(config) as (_, conn):
        if schema not in existing_ledgers(conn, config, [schema]):
            if not public:
                _tenant_rows(conn, config, [schema])  # raises for an unknown tenant
            return []
        return read_history(conn, config, schema)


# --- validate ----------------------------------------------------------------------------


@dataclass
class ValidateResult:
    problems: list[str] = field(default_factory=list)
    schemas_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(config: Config) -> ValidateResult:
    """Check applied migrations against the files, the registry against the schemas, and
    the state summary against the ledgers."""
    mset = discover(config.migrations_directory)
    result = ValidateResult()
    with _session(config) as (_, conn):
        ex = _existing(conn, config)
        registered = [s for s, _ in _tenant_rows(conn, config, None)] if ex["registry"] else []
        schemas = [PUBLIC, *registered]
        ledgers = read_ledgers(conn, config, schemas)
        result.schemas_checked = len(schemas)
        for schema in schemas:
            ns: Namespace = "public" if schema == PUBLIC else "tenant"
            plan = plan_from_ledger(schema, ns, mset.of(ns), ledgers[schema])
            result.problems += plan.problems
        present = set(conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars())
        for schema in registered:
            if schema not in present:
                result.problems.append(f"{schema}: registered tenant has no schema")
        orphans = (
            conn.execute(
                sa.text(
                    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                    "c.relnamespace WHERE c.relname = :t AND n.nspname <> 'public' "
                    "AND NOT n.nspname = ANY(:r) ORDER BY 1"
                ),
                {"t": config.migrations_table, "r": registered},
            )
            .scalars()
            .all()
        )
        for schema in orphans:
            result.problems.append(f"{schema}: schema has a ledger but no registry row")
        if ex["state"]:
            states: dict[str, str] = {
                r[0]: r[1]
                for r in conn.execute(
                    sa.text(f"SELECT schema_name, fingerprint FROM {state_ref(config)}")
                )
            }
            for schema in schemas:
                rows = ledgers[schema]
                actual = fingerprint((r.name, r.checksum) for r in rows)
                if schema in states and states[schema] != actual:
                    result.problems.append(
                        f"{schema}: state summary disagrees with the ledger (run 'mtm migrate' "
                        "to rewrite it)"
                    )
                elif schema not in states and rows:
                    result.problems.append(f"{schema}: ledger has no state summary")
            for schema in sorted(set(states) - set(schemas) - set(orphans)):
                result.problems.append(
                    f"{schema}: state summary of a schema that is not registered"
                )
    return result


# --- the embedded database ---------------------------------------------------------------


def db_start(config: Config) -> str:
    _refuse_configured(config)
    return EmbeddedServer(config.embedded_data_dir).start()


def db_stop(config: Config) -> bool:
    _refuse_configured(config)
    return EmbeddedServer(config.embedded_data_dir).stop()


def db_status(config: Config) -> EmbeddedStatus:
    return EmbeddedServer(config.embedded_data_dir).status()


def db_url(config: Config) -> str:
    """The URL mtm uses: the configured one, or the embedded server's (started)."""
    return database.resolve_url(config)


def _refuse_configured(config: Config) -> None:
    if config.database_url:
        raise UsageError(
            "a database is configured (database_url or MTM_DATABASE_URL); "
            "mtm db manages only the embedded one"
        )
