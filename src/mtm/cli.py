"""The command line: parse options, call a function of ``mtm.commands``, render the result.

Expected failures (``MtmError``) print one line, ``error: ...``, on stderr and exit with
their code (``exits.py``); so does a "permission denied" from the server. Ctrl-C lets
running steps finish and exits 130. The commands, SQLAlchemy, psycopg and Alembic are
imported inside the command functions, so ``mtm --help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from . import logs
from .errors import MtmError, insufficient_privilege
from .exits import Exit
from .keys import help_of
from .words import plural

if TYPE_CHECKING:
    from rich.console import Console

    from .config import Config
    from .progress import Progress


def _mask(text: str) -> str:
    from .config import mask_url

    return mask_url(text)


class MtmGroup(click.Group):
    """Turns MtmError (and a server's "permission denied") into one clear line and its
    exit code: the one place errors become output."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MtmError as exc:
            click.echo(f"error: {_mask(exc.message)}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(Exit.INTERRUPTED)
        except Exception as exc:
            refused = insufficient_privilege(exc)
            if refused is None:
                raise
            click.echo(f"error: {_mask(refused.message)}", err=True)
            ctx.exit(refused.exit_code)
        finally:
            logs.unconfigure()


def _config(ctx: click.Context) -> Config:
    from .config import Config

    obj = ctx.find_root().obj
    if "config" not in obj:
        obj["config"] = Config.load(
            obj.get("config_path"), overrides={"database_url": obj.get("url")}
        )
    config: Config = obj["config"]
    return config


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _progress(config: Config, as_json: bool) -> Progress:
    from .progress import NoProgress
    from .report import LiveProgress, PlainProgress

    if as_json:
        return NoProgress()
    if sys.stdout.isatty():
        return LiveProgress(_console(), config.public_schema_display_name)
    return PlainProgress(sys.stdout, config.public_schema_display_name)


@click.group(cls=MtmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (mtm.toml, pyproject.toml or the original tool's .json). "
    "Default: found by walking up from the current directory.",
)
@click.option(
    "--url",
    metavar="URL",
    help="The database URL; overrides database_url and the db_* keys of the config "
    "and their MTM_* variables.",
)
@click.option("-v", "--verbose", count=True, help="Log each step (-v), and more (-vv).")
@click.option("-q", "--quiet", is_flag=True, help="Log errors only.")
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default="text",
    show_default=True,
    help="Log lines on stderr: text, or one JSON object per record.",
)
@click.version_option(package_name="multi-tenant-migrate", prog_name="mtm")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    url: str | None,
    verbose: int,
    quiet: bool,
    log_format: str,
) -> None:
    """mtm: schema-per-tenant PostgreSQL migrations.

    A public schema plus one schema per tenant; migrations in two namespaces, public
    and tenant; one command rolls every schema forward.

    Every config key can also be set as MTM_<KEY> (MTM_DATABASE_URL, MTM_JOBS...):
    option > environment > config file > default. Exit codes: 0 ok; 1 failure or
    findings; 2 usage or config error, or refused before changing anything; 3
    status --check found pending work; 4 cannot connect; 130 interrupted.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["url"] = url
    logs.configure(verbose, quiet, log_format)


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Write a commented mtm.toml and the migrations/public and migrations/tenant folders."""
    from . import commands

    result = commands.init(directory)
    for path in result.created:
        click.echo(f"created {path}")


@cli.command()
@click.argument("namespace", type=click.Choice(["public", "tenant"]))
@click.argument("message")
@click.option("--sql", is_flag=True, help="Write an SQL migration instead of a Python one.")
@click.pass_context
def new(ctx: click.Context, namespace: str, message: str, sql: bool) -> None:
    """Write a new migration file named with a UTC timestamp and a slug of MESSAGE."""
    from . import commands

    click.echo(str(commands.new(_config(ctx), namespace, message, sql=sql)))


@cli.command()
@click.argument("schema")
@click.option("--domain", "domains", multiple=True, help="A host name of the tenant (repeatable).")
@click.option("--name", help="Display name of the tenant.")
@click.option("--no-migrate", is_flag=True, help="Create the schema without applying migrations.")
@click.option(
    "--role",
    is_flag=True,
    help="Also create a PostgreSQL role that can use only this tenant's schema.",
)
@click.option(
    "--login",
    is_flag=True,
    help="Let the tenant's role log in, with a generated password (needs --role).",
)
@click.option(
    "--password-file",
    help="Write the login role's password to this file (mode 0600) instead of printing it.",
)
@click.pass_context
def create(
    ctx: click.Context,
    schema: str,
    domains: tuple[str, ...],
    name: str | None,
    no_migrate: bool,
    role: bool,
    login: bool,
    password_file: str | None,
) -> None:
    """Register tenant SCHEMA, create its schema and apply every tenant migration, in one
    transaction."""
    from . import commands

    result = commands.create(
        _config(ctx),
        schema,
        domains=domains,
        name=name,
        migrate=not no_migrate,
        role=role,
        login=login,
        password_file=password_file,
    )
    if n := len(result.public_applied):
        click.echo(f"applied {plural(n, 'pending public migration')} first")
    click.echo(
        f"created tenant {result.tenant.schema} with {plural(len(result.applied), 'migration')} "
        f"in {result.seconds:.2f}s"
        + (f" (domains: {', '.join(result.tenant.domains)})" if result.tenant.domains else "")
        + (f" and role {result.role}" if result.role else "")
    )
    _show_password(result.role, result.password, result.password_file)


def _show_password(role: str | None, password: str | None, path: Any) -> None:
    """The one place a login role's password is shown: on stdout, or where it went."""
    if password is not None:
        click.echo(f"password of role {role} (shown only now): {password}")
    elif path is not None:
        click.echo(f"password of role {role} written to {path} (mode 0600)")


@cli.command("tenants")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def tenants_cmd(ctx: click.Context, as_json: bool) -> None:
    """List tenants: schema, name, domains, created."""
    from . import commands
    from .report import dump_json, tenants_table

    items = commands.tenants(_config(ctx))
    if as_json:
        dump_json(
            [
                {
                    "schema": t.schema,
                    "name": t.name,
                    "domains": list(t.domains),
                    "created_at": t.created_at,
                }
                for t in items
            ]
        )
    else:
        _console().print(tenants_table(items))


@cli.command()
@click.argument("schema")
@click.option("--yes", is_flag=True, help="Really drop the schema and all its data.")
@click.option(
    "--cascade-outside",
    is_flag=True,
    help="Also drop objects outside the schema that depend on it (views, foreign keys...).",
)
@click.pass_context
def drop(ctx: click.Context, schema: str, yes: bool, cascade_outside: bool) -> None:
    """Drop tenant SCHEMA: its schema with all data, and its registry row (needs --yes)."""
    from . import commands

    result = commands.drop(_config(ctx), schema, yes=yes, cascade_outside=cascade_outside)
    click.echo(f"dropped tenant {schema}" + (f" and role {result.role}" if result.role else ""))
    if result.outside:
        click.echo(f"also dropped, outside schema {schema}: {'; '.join(result.outside)}")


def _migrate_options(f: Any) -> Any:
    options = [
        click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable)."),
        click.option("--dry-run", is_flag=True, help="Print the plan; change nothing."),
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
        click.option("--json", "as_json", is_flag=True, help="Print a JSON result."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@_migrate_options
@click.pass_context
def migrate(ctx: click.Context, /, **kwargs: Any) -> None:
    """Apply pending migrations: public first, then every tenant (alias: up)."""
    _run_migrate(ctx, **kwargs)


@cli.command("up", hidden=True)
@_migrate_options
@click.pass_context
def up(ctx: click.Context, /, **kwargs: Any) -> None:
    """Alias of migrate."""
    _run_migrate(ctx, **kwargs)


def _run_migrate(
    ctx: click.Context,
    tenants: tuple[str, ...],
    dry_run: bool,
    jobs: int | None,
    continue_on_error: bool,
    allow_out_of_order: bool,
    lock_wait: float,
    lock_timeout: str | None,
    statement_timeout: str | None,
    retries: int | None,
    as_json: bool,
) -> None:
    from . import commands
    from .report import dump_json, migrate_json, migrate_summary

    config = _config(ctx)
    result = commands.migrate(
        config,
        tenants=list(tenants) or None,
        dry_run=dry_run,
        jobs=jobs,
        continue_on_error=continue_on_error,
        allow_out_of_order=allow_out_of_order,
        lock_wait=lock_wait,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        retries=retries,
        progress=_progress(config, as_json),
    )
    if as_json:
        dump_json(migrate_json(result))
    else:
        for line in migrate_summary(result, config.public_schema_display_name):
            click.echo(line, err=line.startswith("FAILED"))
    if result.outcome.interrupted:
        ctx.exit(Exit.INTERRUPTED)
    if not result.ok:
        ctx.exit(Exit.FAILED)


@cli.command()
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable).")
@click.option("--all", "list_all", is_flag=True, help="One row per tenant, however many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--check", is_flag=True, help="Exit 3 when anything is pending.")
@click.pass_context
def status(
    ctx: click.Context, tenants: tuple[str, ...], list_all: bool, as_json: bool, check: bool
) -> None:
    """Where every schema stands: applied/total, last applied, pending."""
    from . import commands
    from .report import dump_json, status_json, status_table

    result = commands.status(_config(ctx), tenants=list(tenants) or None)
    if as_json:
        dump_json(status_json(result))
    else:
        console = _console()
        for renderable in status_table(result, list_all=list_all or bool(tenants)):
            console.print(renderable)
    if check and result.pending:
        ctx.exit(Exit.PENDING)


@cli.command()
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
    from . import commands

    config = _config(ctx)
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


@cli.command()
@click.option("--tenant", help="The tenant whose ledger to show.")
@click.option("--public", is_flag=True, help="Show the public schema's ledger.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def history(ctx: click.Context, tenant: str | None, public: bool, as_json: bool) -> None:
    """The ledger of one schema: applied migrations, when, how long."""
    from . import commands
    from .report import dump_json, history_table

    rows = commands.history(_config(ctx), tenant=tenant, public=public)
    if as_json:
        dump_json([r.__dict__ for r in rows])
    else:
        _console().print(history_table(rows))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def validate(ctx: click.Context, as_json: bool) -> None:
    """Check applied migrations against the files and the registry against the schemas."""
    from . import commands
    from .report import dump_json

    result = commands.validate(_config(ctx))
    if as_json:
        dump_json(
            {
                "ok": result.ok,
                "schemas_checked": result.schemas_checked,
                "problems": result.problems,
            }
        )
    else:
        for p in result.problems:
            click.echo(p)
        click.echo(
            f"{plural(result.schemas_checked, 'schema')} checked: "
            + ("no problems" if result.ok else plural(len(result.problems), "problem"))
        )
    if not result.ok:
        ctx.exit(Exit.FAILED)


@cli.group()
def role() -> None:
    """Tenant login roles: one set of credentials per tenant."""


@role.command("rotate")
@click.argument("schema")
@click.option(
    "--password-file",
    help="Write the new password to this file (mode 0600) instead of printing it.",
)
@click.option("--login", is_flag=True, help="Let a tenant role made without --login log in.")
@click.pass_context
def role_rotate(ctx: click.Context, schema: str, password_file: str | None, login: bool) -> None:
    """Give tenant SCHEMA's login role a new password; sessions already open keep running."""
    from . import commands

    result = commands.rotate_role(_config(ctx), schema, password_file=password_file, login=login)
    _show_password(result.role, result.password, result.password_file)


@cli.group()
def db() -> None:
    """The embedded PostgreSQL used when no database is configured."""


@db.command("start")
@click.pass_context
def db_start(ctx: click.Context) -> None:
    """Start the embedded server (initialising it on first use)."""
    from . import commands

    click.echo(commands.db_start(_config(ctx)))


@db.command("stop")
@click.pass_context
def db_stop(ctx: click.Context) -> None:
    """Stop the embedded server."""
    from . import commands

    stopped = commands.db_stop(_config(ctx))
    click.echo("stopped" if stopped else "not running")


@db.command("status")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Whether the embedded server runs, and where."""
    from . import commands

    config = _config(ctx)
    if config.database_url:
        click.echo(f"configured database: {_mask(config.database_url)}")
        return
    st = commands.db_status(config)
    if st.running:
        click.echo(f"running (pid {st.pid}) data {st.data_dir}\n{st.url}")
    else:
        state = "stopped" if st.initialized else "not initialised"
        click.echo(f"{state}: data {st.data_dir}")
        ctx.exit(Exit.FAILED)


@db.command("url")
@click.pass_context
def db_url(ctx: click.Context) -> None:
    """Print the database URL (starting the embedded server if it is the one used)."""
    from . import commands

    click.echo(commands.db_url(_config(ctx)))


def main() -> None:
    cli(prog_name="mtm")


if __name__ == "__main__":
    main()
