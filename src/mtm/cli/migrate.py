"""The migration commands: migrate (and its alias up), status, down, stamp, history,
validate."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError
from ..exits import Exit
from ..keys import help_of
from ..words import plural
from .shared import config_of, console

if TYPE_CHECKING:
    from ..config import Config
    from ..plan import StampChange
    from ..progress import Progress
    from ..results import MigrateResult


def _progress(config: Config, as_json: bool) -> Progress:
    from ..progress import NoProgress
    from ..report import LiveProgress, PlainProgress

    if as_json:
        return NoProgress()
    if sys.stdout.isatty():
        return LiveProgress(console(), config.public_schema_display_name)
    return PlainProgress(sys.stdout, config.public_schema_display_name)


def _migrate_options(f: Any) -> Any:
    """The options ``migrate`` and ``up`` share.

    Longer than most: one list of declarations, one option each, read top to bottom."""
    options = [
        click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable)."),
        click.option(
            "--tenant-file",
            metavar="FILE",
            help="Only the tenants listed in FILE, one schema a line ('#' comments; - for "
            "stdin). --tenant, --tenant-file and --match intersect.",
        ),
        click.option(
            "--match",
            metavar="PATTERN",
            help="Only tenants whose schema name matches this shell glob (e.g. 'eu_*').",
        ),
        click.option(
            "--canary",
            metavar="N|P%",
            help="Only N (or P%, rounded up) of the selected tenants with pending work, "
            "the first by md5(schema), named before they run; then stop.",
        ),
        click.option(
            "--then-all",
            is_flag=True,
            help="With --canary: go on with the other tenants if every canary succeeded.",
        ),
        click.option("--dry-run", is_flag=True, help="Print the plan; change nothing."),
        click.option(
            "--sql",
            "show_sql",
            is_flag=True,
            help="With --dry-run: print the SQL the run would send, once per distinct plan.",
        ),
        click.option("--jobs", "-j", type=int, help=help_of("jobs")),
        click.option(
            "--continue-on-error",
            is_flag=True,
            help="Migrate every tenant it can; report every failure at the end.",
        ),
        click.option(
            "--allow-out-of-order",
            is_flag=True,
            help="Apply migrations that sort before one already applied.",
        ),
        click.option(
            "--lock-wait",
            type=float,
            default=0.0,
            show_default=True,
            help="Seconds to wait for another run's lock.",
        ),
        click.option("--lock-timeout", help=help_of("lock_timeout")),
        click.option("--statement-timeout", help=help_of("statement_timeout")),
        click.option("--retries", type=int, help=help_of("retries")),
        click.option(
            "--to",
            "to",
            metavar="NAMESPACE:NAME",
            help="Only tenant:NAME or public:NAME: that namespace up to NAME and no further "
            "(the other namespace is left as it is).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON result."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command()
@_migrate_options
@click.pass_context
def migrate(ctx: click.Context, /, **kwargs: Any) -> None:
    """Apply pending migrations: public first, then every tenant (alias: up)."""
    _run_migrate(ctx, **kwargs)


@click.command("up", hidden=True)
@_migrate_options
@click.pass_context
def up(ctx: click.Context, /, **kwargs: Any) -> None:
    """Alias of migrate."""
    _run_migrate(ctx, **kwargs)


def _run_migrate(
    ctx: click.Context,
    tenants: tuple[str, ...],
    tenant_file: str | None,
    match: str | None,
    canary: str | None,
    then_all: bool,
    dry_run: bool,
    show_sql: bool,
    jobs: int | None,
    continue_on_error: bool,
    allow_out_of_order: bool,
    lock_wait: float,
    lock_timeout: str | None,
    statement_timeout: str | None,
    retries: int | None,
    to: str | None,
    as_json: bool,
) -> None:
    from .. import commands
    from ..report import dump_json, migrate_json, migrate_summary
    from ..rolloutreport import rollout_json, rollout_lines, stage_line

    if show_sql and (not dry_run or as_json):
        raise UsageError(
            "--sql prints the SQL of a dry run: give it with --dry-run, without --json"
        )
    config = config_of(ctx)
    result = commands.migrate(
        config,
        tenants=list(tenants) or None,
        tenant_file=tenant_file,
        match=match,
        canary=canary,
        then_all=then_all,
        announce=None if as_json else lambda staged: click.echo(stage_line(staged)),
        dry_run=dry_run,
        jobs=jobs,
        continue_on_error=continue_on_error,
        allow_out_of_order=allow_out_of_order,
        lock_wait=lock_wait,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        retries=retries,
        progress=_progress(config, as_json or show_sql),
        to=to,
    )
    if show_sql:
        _print_sql(config, result)
    elif as_json:
        dump_json({**migrate_json(result), "rollout": rollout_json(result.rollout)})
    else:
        for line in migrate_summary(result, config.public_schema_display_name):
            click.echo(line, err=line.startswith("FAILED"))
        for line in rollout_lines(result):
            click.echo(line)
    if result.outcome.interrupted:
        ctx.exit(Exit.INTERRUPTED)
    if not result.ok:
        ctx.exit(Exit.FAILED)


def _print_sql(config: Config, result: MigrateResult) -> None:
    from .. import commands
    from ..render import text

    sections = commands.plan_sql(result)
    if not sections:
        click.echo("-- mtm: nothing to migrate")
    else:
        click.echo(text(config, sections), nl=False)


@click.command()
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable).")
@click.option("--all", "list_all", is_flag=True, help="One row per tenant, however many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--check", is_flag=True, help="Exit 3 when anything is pending.")
@click.pass_context
def status(
    ctx: click.Context, tenants: tuple[str, ...], list_all: bool, as_json: bool, check: bool
) -> None:
    """Where every schema stands: applied/total, last applied, pending."""
    from .. import commands
    from ..jsonout import dump_json
    from ..report import status_json, status_table
    from ..rollout import ahead
    from ..rolloutreport import ahead_json, ahead_line
    from .placement import nodes_line

    names = as_json or list_all or bool(tenants)  # else only a small fleet's are shown
    result = commands.status(
        config_of(ctx), tenants=list(tenants) or None, names=names, summarise=not names
    )
    found = ahead(result.positions())
    if as_json:
        data = status_json(result, found.schemas if found is not None else ())
        dump_json({**data, "ahead": ahead_json(found)})
    else:
        out = console()
        marked = found.schemas if found is not None else frozenset()
        for renderable in status_table(result, list_all=list_all or bool(tenants), ahead=marked):
            out.print(renderable)
        if found is not None:
            out.print(ahead_line(found))
        placed = nodes_line(result)
        if placed is not None:
            out.print(placed)
    if check and result.pending:
        ctx.exit(Exit.PENDING)


@click.command()
@click.option("--tenant", "tenants", multiple=True, help="Revert in this tenant (repeatable).")
@click.option("--all-tenants", is_flag=True, help="Revert in every tenant.")
@click.option("--public", is_flag=True, help="Revert in the public schema.")
@click.option("--steps", type=int, help="How many migrations to revert (default 1).")
@click.option("--to", "to", help="Revert everything applied after this migration.")
@click.pass_context
def down(
    ctx: click.Context,
    tenants: tuple[str, ...],
    all_tenants: bool,
    public: bool,
    steps: int | None,
    to: str | None,
) -> None:
    """Revert the most recently applied migrations, newest first, one transaction each."""
    from .. import commands

    config = config_of(ctx)
    result = commands.down(
        config,
        tenants=list(tenants) or None,
        all_tenants=all_tenants,
        public=public,
        steps=steps,
        to=to,
    )
    name = config.public_schema_display_name
    for r in result.results:
        label = name if r.schema == "public" else r.schema
        if r.ok:
            click.echo(f"{label}: reverted {', '.join(r.reverted)}")
        else:
            done = f" (reverted {', '.join(r.reverted)} first)" if r.reverted else ""
            click.echo(f"FAILED {label}: reverting {r.failed_migration}: {r.error}{done}", err=True)
    if not result.results:
        click.echo("nothing to revert")
    if not result.ok:
        ctx.exit(Exit.FAILED)


@click.command()
@click.option("--tenant", help="The tenant whose ledger to show.")
@click.option("--public", is_flag=True, help="Show the public schema's ledger.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def history(ctx: click.Context, tenant: str | None, public: bool, as_json: bool) -> None:
    """The ledger of one schema: applied migrations, when, how long."""
    from .. import commands
    from ..report import dump_json, history_table

    rows = commands.history(config_of(ctx), tenant=tenant, public=public)
    if as_json:
        dump_json([r.__dict__ for r in rows])
    else:
        console().print(history_table(rows))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def validate(ctx: click.Context, as_json: bool) -> None:
    """Check applied migrations against the files and the registry against the schemas.

    Fast: it reads ledgers, not the schemas' structure; 'mtm diff' compares each tenant
    schema's tables, columns, indexes... with a schema built at the same step.
    """
    from .. import commands
    from ..jsonout import dump_json

    result = commands.validate(config_of(ctx))
    if as_json:
        dump_json(
            {
                "ok": result.ok,
                "schemas_checked": result.schemas_checked,
                "problems": result.problems,
                "adopted": result.adopted,
            }
        )
    else:
        for p in result.problems:
            click.echo(p)
        if result.adopted:
            click.echo(
                f"{plural(len(result.adopted), 'migration')} of the original tool "
                "recognised as adopted history (never run): " + ", ".join(result.adopted)
            )
        click.echo(
            f"{plural(result.schemas_checked, 'schema')} checked: "
            + ("no problems" if result.ok else plural(len(result.problems), "problem"))
            + " (ledgers against files; 'mtm diff' compares the schemas themselves)"
        )
    if not result.ok:
        ctx.exit(Exit.FAILED)


@click.command()
@click.argument("name")
@click.option("--tenant", "tenants", multiple=True, help="Stamp this tenant (repeatable).")
@click.option("--all-tenants", is_flag=True, help="Stamp every tenant.")
@click.option("--public", is_flag=True, help="Stamp the public schema.")
@click.option("--delete", is_flag=True, help="Remove the records of NAME and all after it.")
@click.option("--yes", is_flag=True, help="Needed to change more than one schema.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON result.")
@click.pass_context
def stamp(
    ctx: click.Context,
    name: str,
    tenants: tuple[str, ...],
    all_tenants: bool,
    public: bool,
    delete: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Record migrations up to NAME (or head) as applied without running them."""
    from .. import commands
    from ..report import dump_json, stamp_json, stamp_line

    config = config_of(ctx)

    def show(changes: Sequence[StampChange]) -> None:
        for change in changes:
            click.echo(stamp_line(change, config.public_schema_display_name))

    result = commands.stamp(
        config,
        name,
        tenants=list(tenants) or None,
        all_tenants=all_tenants,
        public=public,
        delete=delete,
        yes=yes,
        show=None if as_json else show,
    )
    if as_json:
        dump_json(stamp_json(result))
    elif result.changes:
        click.echo(f"stamped {plural(len(result.changes), 'schema')}; no migration was run")
    else:
        click.echo(f"nothing to stamp: the ledgers already agree with {result.name}")
