"""Reading migrations before they run: ``sql`` (their SQL) and ``lint`` (what will hurt).

Neither changes anything. Both work from the files alone, except ``--pending``, which
asks the database what is pending; ``plan_sql`` renders a ``migrate --dry-run`` plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .. import modelset, planner, render, sqlscript
from ..config import Config
from ..errors import UsageError
from ..identifiers import validate_schema_name
from ..ledger import PUBLIC
from ..lintrules import Finding, Subject, disabled_rules
from ..lintrules import lint as lint_rules
from ..migrations import NAMESPACES, Migration, MigrationSet, Namespace, discover
from ..plan import fingerprint
from ..results import MigrateResult
from ..tables import existing as _existing
from .base import session


def sql(
    config: Config,
    *,
    tenant: str | None = None,
    public: bool = False,
    name: str | None = None,
    pending: bool = False,
) -> list[render.Section]:
    """The SQL of one namespace's migrations (all, ``name``, or those ``pending`` in the
    schema), for ``tenant``, the public schema, or no tenant in particular."""
    if tenant is not None and public:
        raise UsageError("give --tenant SCHEMA or --public, not both")
    if name is not None and pending:
        raise UsageError("give a migration NAME or --pending, not both")
    namespace: Namespace = "public" if public else "tenant"
    schema = PUBLIC if public else validate_schema_name(tenant) if tenant is not None else None
    mset = discover(config.migrations_directory)
    if name is not None:
        found = mset.find(namespace, name)
        if found is None:
            raise UsageError(
                f"there is no {namespace} migration {name!r} (names are file names without "
                "the extension; see 'mtm status')"
            )
        chosen = [found]
    elif pending:
        if schema is None:
            raise UsageError("--pending needs --tenant SCHEMA or --public: pending where?")
        chosen = _pending(config, mset, schema, namespace)
    else:
        chosen = mset.of(namespace)
    rendered = tuple(render.render(m, schema) for m in chosen)
    return [render.Section(namespace, (schema,) if schema else (), rendered)]


def _pending(
    config: Config, mset: MigrationSet, schema: str, namespace: Namespace
) -> list[Migration]:
    with session(config) as (_, conn):
        tables = _existing(conn, config)
        if namespace == "public":
            return planner.public_plan(conn, config, mset, tables).pending
        rows = planner.tenant_rows(conn, config, tables, [schema])
        (plan,) = planner.plans(conn, config, mset.tenant, "tenant", rows)
        return plan.pending


def plan_sql(result: MigrateResult) -> list[render.Section]:
    """The SQL of a ``migrate --dry-run`` plan: public's, then one section per distinct
    tenant plan (rendered for its schema if it is alone, for no tenant otherwise)."""
    sections = []
    if result.public_plan is not None and result.public_plan.pending:
        rendered = tuple(render.render(m, PUBLIC) for m in result.public_plan.pending)
        sections.append(render.Section("public", (PUBLIC,), rendered))
    groups: dict[tuple[str, ...], list[str]] = {}
    by_names: dict[tuple[str, ...], list[Migration]] = {}
    for plan in result.tenant_plans:
        key = tuple(m.name for m in plan.pending)
        if key:
            groups.setdefault(key, []).append(plan.schema)
            by_names[key] = plan.pending
    for key, schemas in groups.items():
        schema = schemas[0] if len(schemas) == 1 else None
        rendered = tuple(render.render(m, schema) for m in by_names[key])
        sections.append(render.Section("tenant", tuple(schemas), rendered))
    return sections


@dataclass(frozen=True)
class LintResult:
    """What ``lint`` found in how many migrations."""

    findings: list[Finding]
    checked: int

    @property
    def ok(self) -> bool:
        return not self.findings


def lint(
    config: Config,
    *,
    names: Sequence[str] = (),
    pending: bool = False,
    models: str | Sequence[str] | None = None,
    citus: bool | None = None,
) -> LintResult:
    """Check migrations (``names``, those pending anywhere, or all) against the rules;
    the original tool's ``.js`` files are skipped (never run, nothing to check), and
    naming one is refused.

    ``models`` ("module:attribute", one or several) names the SQLAlchemy MetaData the
    application uses; by default the config's ``models`` key, when it has one.
    ``citus``: also the rules of distributed tenant schemas; by default when the config
    says ``distributed = true`` (lint reads no database to detect it).
    """
    if names and pending:
        raise UsageError("give migration names or --pending, not both")
    mset = discover(config.migrations_directory)
    selected: set[tuple[str, str]] | None = None
    if names:
        selected = {_resolve(mset, n) for n in names}
    elif pending:
        selected = _pending_anywhere(config, mset)
    # The original tool's .js files are history, never run: nothing of them to check.
    legacy = {(m.namespace, m.name) for m in mset if m.legacy}
    if names and selected is not None and selected & legacy:
        named = ", ".join(sorted(f"{ns}:{n}" for ns, n in selected & legacy))
        raise UsageError(
            f"{named}: a file of the original tool (.js), history that is never run: "
            "nothing to lint (lint the baseline that stands in for it)"
        )
    if selected is not None:
        selected -= legacy
    subjects = [_subject(m) for m in mset if not m.legacy]
    spec = models if models is not None else config.models
    referenced = _model_columns(config, spec) if spec else None
    on_citus = config.distributed is True if citus is None else citus
    findings = lint_rules(subjects, selected, referenced, citus=on_citus)
    checked = len(subjects) if selected is None else len(selected)
    return LintResult(findings, checked)


def _resolve(mset: MigrationSet, given: str) -> tuple[str, str]:
    """``NAME`` or ``NAMESPACE:NAME`` as (namespace, name) of an existing migration."""
    namespace, sep, name = given.partition(":")
    if sep and namespace in ("public", "tenant"):
        ns: Namespace = "public" if namespace == "public" else "tenant"
        if mset.find(ns, name) is None:
            raise UsageError(f"there is no {ns} migration {name!r}")
        return ns, name
    found = [ns for ns in NAMESPACES if mset.find(ns, given) is not None]
    if not found:
        raise UsageError(
            f"there is no migration {given!r} (names are file names without the extension)"
        )
    if len(found) > 1:
        raise UsageError(
            f"{given!r} is both a public and a tenant migration: "
            f"write public:{given} or tenant:{given}"
        )
    return found[0], given


def _pending_anywhere(config: Config, mset: MigrationSet) -> set[tuple[str, str]]:
    """(namespace, name) of every migration pending in the public schema or any tenant."""
    with session(config) as (_, conn):
        tables = _existing(conn, config)
        public = planner.public_plan(conn, config, mset, tables)
        head = fingerprint((m.name, m.checksum) for m in mset.tenant)
        rows = planner.tenant_rows(conn, config, tables, None, not_at=head)
        plans = planner.plans(conn, config, mset.tenant, "tenant", rows)
    out = {("public", m.name) for m in public.pending}
    return out | {("tenant", m.name) for p in plans for m in p.pending}


def _subject(migration: Migration) -> Subject:
    """A migration as lint sees it: a SQL file's statements with their lines, or a
    Python migration's offline rendering."""
    path = str(migration.path)
    text = migration.path.read_text(encoding="utf-8", errors="replace")
    disabled = disabled_rules(text, migration.kind, path)
    if migration.kind == "sql":
        statements = sqlscript.split(migration.up_sql)
        return Subject(migration.namespace, migration.name, path, statements, disabled)
    rendered = render.render(migration, None)
    unrendered = rendered.unrendered
    try:
        statements = rendered.statements()
    except sqlscript.ScriptSyntaxError as exc:
        statements, unrendered = [], f"its rendered SQL does not parse: {exc}"
    return Subject(
        migration.namespace,
        migration.name,
        path,
        statements,
        disabled,
        lines=False,
        unrendered=unrendered,
    )


def _model_columns(config: Config, spec: str | Sequence[str]) -> set[tuple[str, str, str]]:
    """(namespace, table, column) of every column of the models, read as autogenerate
    reads them (``modelset``): ``schema="public"`` public, no schema tenant."""
    models = modelset.load(replace(config, models=spec if isinstance(spec, str) else tuple(spec)))
    return {
        (namespace, table.name, column.name)
        for namespace in NAMESPACES
        for table in models.tables(namespace)
        for column in table.columns
    }
