"""What commands and runs return: plain data for the CLI, reports and applications."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .migrations import Namespace
from .plan import SchemaPlan, StampChange
from .registry import Tenant


@dataclass
class SchemaResult:
    """What happened to one schema in a run."""

    schema: str
    namespace: Namespace
    applied: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    failed_migration: str | None = None
    error: str | None = None
    dropped: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class FleetOutcome:
    """Counts and failures of a fleet run; results are streamed, not kept."""

    schemas: int = 0
    steps: int = 0
    failures: list[SchemaResult] = field(default_factory=list)
    not_started: int = 0
    interrupted: bool = False
    connection_errors: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # tenants dropped while the run went on

    def record(self, result: SchemaResult) -> None:
        self.schemas += 1
        self.steps += len(result.applied)
        if not result.ok:
            self.failures.append(result)
        if result.dropped:
            self.dropped.append(result.schema)


@dataclass
class InitResult:
    config_path: Path
    created: list[Path]


@dataclass
class CreateResult:
    tenant: Tenant
    applied: list[str]
    seconds: float
    role: str | None = None
    public_applied: list[str] = field(default_factory=list)  # pending public ones, first
    # of the login role, when not written to password_file; never in repr() or logs
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None


@dataclass
class RotateResult:
    schema: str
    role: str
    password: str | None = field(default=None, repr=False)  # unless written to a file
    password_file: Path | None = None


@dataclass
class DropResult:
    schema: str
    dropped: bool
    role: str | None = None
    outside: tuple[str, ...] = ()  # objects outside the schema dropped with it


@dataclass(frozen=True)
class TablesUpgrade:
    """An upgrade of mtm's own tables (``tables.py``): done, or (in a dry run) pending."""

    from_version: int
    to_version: int
    ledgers: int
    done: bool
    seconds: float = 0.0


@dataclass
class Rollout:
    """A canary run (``migrate --canary``): the canaries, in ``md5(schema)`` order, and the
    other tenants with pending work, which run only with ``then_all`` and only once every
    canary (and public) succeeded."""

    canaries: list[str]
    rest: list[str]
    then_all: bool = False
    canaries_ok: bool | None = None  # None until the canaries have run (and in a dry run)
    rest_started: bool = False


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
    tables: TablesUpgrade | None = None  # mtm's own tables upgraded (or, dry run, pending)
    to: str | None = None  # migrate --to: tenant:NAME or public:NAME (the other namespace waits)
    rollout: Rollout | None = None  # migrate --canary: who went first, and whether the rest did

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

    @classmethod
    def of(
        cls, plan: SchemaPlan, name: str | None = None, domains: tuple[str, ...] = ()
    ) -> SchemaStatus:
        return cls(
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


@dataclass
class StatusResult:
    public: SchemaStatus
    tenants: list[SchemaStatus]
    total_tenant_migrations: int
    display_name: str = "*PUBLIC"
    # On a Citus cluster, each distributed tenant's node (HOST:PORT); None elsewhere.
    nodes: dict[str, str] | None = None
    # A fleet too large to list, summarised (``status(summarise=True)``): each position
    # with its count, and ``tenants`` empty.
    summary: list[tuple[SchemaStatus, int]] | None = None

    @property
    def pending(self) -> bool:
        return any(not s.at_head for s, _ in [(self.public, 1), *self.positions()])

    def positions(self) -> list[tuple[SchemaStatus, int]]:
        """Every tenant's status with how many tenants it stands for (1 unless summarised)."""
        return self.summary if self.summary is not None else [(t, 1) for t in self.tenants]

    def counts(self) -> tuple[int, int]:
        """(tenants, tenants at head)."""
        pairs = self.positions()
        return sum(n for _, n in pairs), sum(n for t, n in pairs if t.at_head)

    def groups(self) -> list[tuple[int, int, tuple[str, ...], bool]]:
        """Tenants grouped by position: (count, applied, pending names, has problems)."""
        counts: dict[tuple[int, tuple[str, ...], bool], int] = {}
        for t, n in self.positions():
            key = (t.applied, tuple(t.pending), bool(t.problems))
            counts[key] = counts.get(key, 0) + n
        return sorted(
            ((n, k[0], k[1], k[2]) for k, n in counts.items()), key=lambda g: (-g[1], g[2])
        )


@dataclass
class DownResult:
    results: list[SchemaResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


@dataclass
class StampResult:
    """What ``stamp`` recorded (or, ``delete``, removed) in each schema it changed."""

    namespace: Namespace
    name: str  # the migration stamped to (``head`` resolved to its name)
    delete: bool
    changes: list[StampChange]


@dataclass
class ValidateResult:
    problems: list[str] = field(default_factory=list)
    schemas_checked: int = 0
    # The original tool's files found in the migrations folder: history, never run.
    adopted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class DomainsResult:
    """What ``domains add`` or ``domains remove`` changed, and the primary after it."""

    schema: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # already the tenant's (add)
    primary: str | None = None
    primary_before: str | None = None


@dataclass
class RenameResult:
    old: str
    new: str
    role: str | None = None  # the tenant role's new name, if it has one
    old_role: str | None = None


@dataclass
class RoleResult:
    """A tenant role added (``role add``) or removed (``role remove``)."""

    schema: str
    role: str
    added: bool
    password: str | None = field(default=None, repr=False)  # unless written to a file
    password_file: Path | None = None


@dataclass
class CloneResult:
    """A tenant made from another at its exact step; ``rows`` per table with ``data``."""

    tenant: Tenant
    source: str
    applied: list[str]
    seconds: float
    rows: dict[str, int] | None = None


@dataclass
class SeedResult:
    """A seed run again for an existing tenant."""

    schema: str
    seed: str
    seconds: float


@dataclass
class AdoptResult:
    """What ``adopt`` changes (or, ``dry_run``, would change): the tenants moved into
    mtm's registry, the schemas whose legacy ledger it turns into mtm's with what each
    records, the baseline files, and what new tenants will not get."""

    dry_run: bool
    mapper: str  # the original tool's mapper table, quoted
    ledger: str  # its ledger table's name
    resumed: bool  # an interrupted adoption is being finished
    moved: list[tuple[str, tuple[str, ...]]]  # (schema, domains) into the registry
    public_record: list[str]  # names public records as adopted ([]: public is done)
    schemas: list[str]  # tenant schemas adopted (or to adopt)
    tenant_record: list[str]  # names each of them records as adopted
    baselines: list[str]  # baseline files written (or to write), as paths
    reference: str | None = None  # the schema the tenant baseline was taken from
    off_step: list[str] = field(default_factory=list)  # tenants recorded at its step anyway
    differ: list[str] = field(default_factory=list)  # structure unlike the reference's
    rows_left: list[str] = field(default_factory=list)  # reference tables with rows
    data_migrations: list[str] = field(default_factory=list)  # .js files that write rows
    warnings: list[str] = field(default_factory=list)
    nothing: bool = False  # the database is mtm's already


@dataclass
class ExportResult:
    """A tenant written to an export file (``mtm export``)."""

    schema: str
    path: Path
    applied: str | None  # the newest migration in its ledger
    migrations: int
    domains: list[str]
    size: int  # bytes
    pg_dump: str
    seconds: float = 0.0


@dataclass
class ImportResult:
    """A tenant restored from an export file (``mtm import``)."""

    schema: str
    source_schema: str
    path: Path
    domains: list[str]
    applied: str | None  # the file's newest applied migration
    migrated: list[str] = field(default_factory=list)  # applied after the import, to head
    warnings: list[str] = field(default_factory=list)  # names of the source schema left as is
    source_role: str | None = None  # the tenant's role in the source: not carried
    pg_restore: str = ""
    seconds: float = 0.0


@dataclass
class AutogenerateResult:
    """What ``mtm new --autogenerate`` wrote (``path`` None: nothing to change, nothing
    written) and the lines it must show: what it could not detect or do."""

    namespace: Namespace
    path: Path | None
    warnings: list[str] = field(default_factory=list)
