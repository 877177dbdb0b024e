"""Commands that change migrations' state: ``migrate`` (up) and ``down``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .. import fleet, planner, rollout, steps
from ..config import Config
from ..database import run_script
from ..errors import UsageError, ValidationFailed
from ..identifiers import validate_schema_name
from ..locks import acquire_run_lock, check_lock_wait, release_run_lock
from ..migrations import MigrationSet, Namespace, discover
from ..plan import SchemaPlan, fingerprint, past, stop_at
from ..progress import NoProgress, Progress
from ..reference import refuse_unplaced_keys
from ..registry import count_tenants
from ..results import DownResult, FleetOutcome, MigrateResult, Rollout, SchemaResult
from ..rollout import Canary, Selection, read_tenant_file
from ..runner import Runner
from ..tables import bring_up_to_date, refuse_foreign_ledgers
from ..tables import existing as _existing
from ..words import plural
from .base import chosen_namespace, chosen_schemas, session, settings

log = logging.getLogger("mtm.run")


def migrate(
    config: Config,
    *,
    tenants: Sequence[str] | None = None,
    tenant_file: str | Path | None = None,
    match: str | None = None,
    canary: int | str | None = None,
    then_all: bool = False,
    dry_run: bool = False,
    jobs: int | None = None,
    continue_on_error: bool = False,
    allow_out_of_order: bool = False,
    lock_wait: float = 0.0,
    lock_timeout: str | None = None,
    statement_timeout: str | None = None,
    retries: int | None = None,
    progress: Progress | None = None,
    to: str | None = None,
    announce: Callable[[Rollout], None] | None = None,
) -> MigrateResult:
    """Public migrations first, then every tenant's pending ones on ``jobs`` connections.

    ``tenants``, ``tenant_file`` (one schema a line, ``-`` for stdin) and ``match`` (a
    shell glob on the schema name) narrow the run to the tenants all of them name.
    ``canary`` (a count, or ``"P%"``) runs only that many of the selected tenants with
    pending work, the first by ``md5(schema)``, and stops; ``then_all`` goes on with the
    rest if every canary succeeded. ``announce`` is told the canaries before they run,
    and again before the rest does (``rest_started``).

    ``to`` (``tenant:NAME`` or ``public:NAME``) brings that namespace's schemas up to
    NAME and no further and leaves the other namespace as it is; a schema already past
    NAME is refused before anything runs.

    Plan, refuse problems (any applied migration that disagrees with its file), run,
    report. Each step is its own transaction; after a failure no new tenant starts
    unless ``continue_on_error``.

    Longer than most: its options take a line each, and planning and running
    stay inside the one try/finally that releases the run lock.
    """
    started = time.perf_counter()
    jobs = config.jobs if jobs is None else jobs
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    lock_wait = check_lock_wait(lock_wait)
    run_settings = settings(config, lock_timeout, statement_timeout, retries)
    stages = _stages(canary, then_all, to)
    selection = Selection(
        tuple(validate_schema_name(t) for t in tenants) if tenants else None,
        read_tenant_file(tenant_file) if tenant_file is not None else None,
        f"--tenant-file {tenant_file}",
        match,
    )
    mset = discover(config.migrations_directory)
    mset.load_all()
    target = parse_target(mset, to)
    with session(config, pool_size=jobs, purpose="mtm migrate", upgrades=True) as (
        engine,
        conn,
    ):
        if not dry_run:
            acquire_run_lock(conn, config, wait=lock_wait, command="migrate")
        try:
            upgrade = bring_up_to_date(
                conn, config, dry_run=dry_run, lock_timeout=run_settings.lock_timeout
            )
            public, every, total = _plan(conn, config, mset, selection, allow_out_of_order, target)
            plans = [p for p in every if not p.at_head]
            refuse_foreign_ledgers(conn, config, [p.schema for p in plans])
            refuse_problems([public, *plans])
            refuse_unplaced_keys(conn, public, plans)
            first, rest = rollout.split(plans, stages) if stages else (plans, [])
            staged = _canaries(first, rest, then_all, announce) if stages else None
            if dry_run:
                seconds = time.perf_counter() - started
                return MigrateResult(
                    True, None, public, plans, total, FleetOutcome(), seconds, upgrade, to, staged
                )
            _rewrite_stale(conn, config, every)
            runner = Runner(
                config,
                run_settings,
                progress or NoProgress(),
                replan=planner.replanner(config, mset, allow_out_of_order, target),
            )
            public_result, outcome = fleet.run(
                runner, engine, conn, public, first, jobs=jobs, continue_on_error=continue_on_error
            )
            if staged is not None:
                outcome = _then_all(
                    staged,
                    runner,
                    engine,
                    conn,
                    public,
                    public_result,
                    outcome,
                    rest,
                    jobs=jobs,
                    continue_on_error=continue_on_error,
                    announce=announce,
                )
            seconds = time.perf_counter() - started
            return MigrateResult(
                False, public_result, public, plans, total, outcome, seconds, upgrade, to, staged
            )
        finally:
            if not dry_run:
                try:
                    release_run_lock(conn, config)
                except sa.exc.DBAPIError:
                    pass  # the connection is gone, and the lock with it


def _canaries(
    first: list[SchemaPlan],
    rest: list[SchemaPlan],
    then_all: bool,
    announce: Callable[[Rollout], None] | None,
) -> Rollout:
    """The rollout of a ``--canary`` run, logged and announced before anything runs."""
    staged = Rollout([p.schema for p in first], [p.schema for p in rest], then_all)
    shown = ", ".join(staged.canaries[:10]) + (" ..." if len(first) > 10 else "")
    log.info(
        "canaries: %d tenants (%s); %d other tenants after them",
        len(first),
        shown,
        len(rest),
        extra={
            "event": "rollout.canaries",
            "canaries": staged.canaries,
            "rest": len(rest),
            "then_all": then_all,
        },
    )
    if announce is not None:
        announce(staged)
    return staged


def _stages(canary: int | str | None, then_all: bool, to: str | None) -> Canary | None:
    """``--canary`` checked against the options it goes with."""
    stages = rollout.parse_canary(canary)
    if then_all and stages is None:
        raise UsageError("--then-all goes with --canary N or --canary P%")
    if stages is not None and to is not None and to.startswith("public:"):
        raise UsageError(
            f"--canary stages the tenants, and --to {to} migrates none; "
            "run --to public:NAME on its own"
        )
    return stages


def _then_all(
    staged: Rollout,
    runner: Runner,
    engine: Engine,
    conn: Connection,
    public: SchemaPlan,
    public_result: SchemaResult | None,
    canaries: FleetOutcome,
    rest: list[SchemaPlan],
    *,
    jobs: int,
    continue_on_error: bool,
    announce: Callable[[Rollout], None] | None,
) -> FleetOutcome:
    """After the canaries: the rest of the tenants, with ``then_all`` and only if public
    and every canary succeeded. Public already ran; it is not run again."""
    staged.canaries_ok = (
        (public_result is None or public_result.ok)
        and not canaries.failures
        and not canaries.interrupted
        and not canaries.connection_errors
    )
    if not (staged.then_all and staged.canaries_ok and rest):
        if rest:
            why = "a canary failed" if not staged.canaries_ok else "no --then-all"
            log.log(
                logging.WARNING if staged.then_all else logging.INFO,
                "%d tenants not started after the canaries: %s",
                len(rest),
                why,
                extra={"event": "rollout.held", "rest": len(rest), "reason": why},
            )
        return canaries
    staged.rest_started = True
    log.info(
        "every canary succeeded: migrating the other %d tenants",
        len(rest),
        extra={"event": "rollout.rest", "rest": len(rest)},
    )
    if announce is not None:
        announce(staged)
    done = replace(public, pending=[])
    _, more = fleet.run(
        runner, engine, conn, done, rest, jobs=jobs, continue_on_error=continue_on_error
    )
    return rollout.combine(canaries, more)


def _plan(
    conn: Connection,
    config: Config,
    mset: MigrationSet,
    selection: Selection,
    allow_out_of_order: bool,
    target: Target | None = None,
) -> tuple[SchemaPlan, list[SchemaPlan], int]:
    """The public plan, the plans of the selected tenants not known to be at head (or
    at the target), and how many tenants the run covers."""
    tables = _existing(conn, config)
    public = planner.public_plan(conn, config, mset, tables, allow_out_of_order=allow_out_of_order)
    only = rollout.resolve(conn, config, tables["registry"], selection)
    tenant_files = mset.tenant
    if target is not None and target[0] == "tenant":
        tenant_files = [m for m in mset.tenant if m.name <= target[1]]
    head = fingerprint((m.name, m.checksum) for m in tenant_files)
    rows = planner.tenant_rows(conn, config, tables, only, not_at=head)
    if target is not None and target[0] == "public":
        rows = []  # --to public:NAME leaves the tenants as they are
    every = planner.plans(
        conn, config, mset.tenant, "tenant", rows, allow_out_of_order=allow_out_of_order
    )
    if target is not None:
        public, every = _stop_at(target, public, every)
    if target is not None and target[0] == "public":
        total = 0  # the run covers no tenant
    elif only is not None:
        total = len(only)
    else:
        total = count_tenants(conn, config) if tables["registry"] else 0
    return public, every, total


# ``migrate --to``: the namespace and the migration to stop at.
Target = tuple[Namespace, str]


def parse_target(mset: MigrationSet, to: str | None) -> Target | None:
    """``tenant:NAME`` or ``public:NAME`` as (namespace, name), NAME one of the files."""
    if to is None:
        return None
    namespace, sep, name = to.partition(":")
    if not sep or namespace not in ("tenant", "public") or not name:
        raise UsageError(f"--to takes tenant:NAME or public:NAME, not {to!r}")
    ns: Namespace = "tenant" if namespace == "tenant" else "public"
    if mset.find(ns, name) is None:
        raise UsageError(
            f"--to {to}: there is no {ns} migration {name!r} (see 'mtm status'; "
            "names are file names without the extension)"
        )
    return ns, name


def _stop_at(
    target: Target, public: SchemaPlan, tenants: list[SchemaPlan]
) -> tuple[SchemaPlan, list[SchemaPlan]]:
    """The plans stopped at the target; the other namespace has nothing pending. A
    schema of the target's namespace already past it is refused (nothing has run)."""
    namespace, name = target
    chosen = [public] if namespace == "public" else tenants
    beyond = [(p.schema, newest) for p in chosen if (newest := past(p, name)) is not None]
    if beyond:
        schema, newest = beyond[0]
        others = f" (and {plural(len(beyond) - 1, 'more schema')})" if len(beyond) > 1 else ""
        raise UsageError(
            f"refusing to migrate --to {namespace}:{name}: schema {schema}{others} is "
            f"already past it ({newest} is applied); use mtm down --to to go back "
            "(nothing was changed)"
        )
    if namespace == "public":
        return stop_at(public, name), []
    return replace(public, pending=[]), [stop_at(p, name) for p in tenants]


def _rewrite_stale(conn: Connection, config: Config, plans: Sequence[SchemaPlan]) -> None:
    """Schemas at head whose state row said otherwise (or was missing) get it rewritten."""
    stale = [p.schema for p in plans if p.at_head]
    for i in range(0, len(stale), 200):
        run_script(conn, steps.refresh_states(config, stale[i : i + 200], "tenant"))


def refuse_problems(plans: Sequence[SchemaPlan]) -> None:
    """Raise ValidationFailed naming (the first 20) problems of ``plans``, if any."""
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
    namespace = chosen_namespace(tenants, all_tenants, public)
    if steps is not None and to is not None:
        raise UsageError("give --steps or --to, not both")
    if steps is not None and steps < 1:
        raise UsageError("--steps must be at least 1")
    mset = discover(config.migrations_directory)
    with session(config, purpose="mtm down") as (_, conn):
        schemas = chosen_schemas(conn, config, _existing(conn, config), tenants, public)
        targets = [(s, namespace) for s in schemas]
        work, problems = planner.reverts(conn, config, mset, targets, steps=steps, to=to)
        if problems:
            raise ValidationFailed("refusing to revert anything:\n  " + "\n  ".join(problems[:20]))
        runner = Runner(config, progress=progress)
        results = []
        for r in work:
            if not r.migrations:
                continue
            tenant = r.schema if r.namespace == "tenant" else None
            res = runner.revert(conn, r.schema, r.namespace, r.migrations, tenant, r.applied)
            results.append(res)
            if not res.ok:
                break
    return DownResult(results)
