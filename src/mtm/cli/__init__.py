"""The command line: parse options, call a function of ``mtm.commands``, render the result.

Expected failures (``MtmError``) print one line, ``error: ...``, on stderr and exit with
their code (``exits.py``); so does a "permission denied" from the server. Ctrl-C lets
running steps finish and exits 130. The commands, SQLAlchemy, psycopg and Alembic are
imported inside the command functions, so ``mtm --help`` and ``--version`` stay fast.

This module holds the group, its global options, ``main`` and the turning of errors into
output; the commands live by area in ``project`` (init, new, db), ``tenants`` (create,
tenants, drop, role; ``existing`` holds create's ``--existing``), ``lifecycle`` (domains,
rename, role add/remove), ``repair``, ``migrate`` (migrate, up, status, down, history,
validate), ``clone`` (clone, seed), ``review`` (sql, lint), ``transfer`` (export,
import), ``drift`` (diff) and ``distribute``.
"""

from __future__ import annotations

import gc
from typing import Any

import click

from .. import logs
from ..errors import MtmError, insufficient_privilege
from ..exits import Exit
from . import (
    adopt,
    clone,
    distribute,
    drift,
    lifecycle,
    migrate,
    placement,
    project,
    repair,
    review,
    tenants,
    transfer,
)
from .shared import mask


class MtmGroup(click.Group):
    """Turns MtmError (and a server's "permission denied") into one clear line and its
    exit code: the one place errors become output."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MtmError as exc:
            click.echo(f"error: {mask(exc.message)}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(Exit.INTERRUPTED)
        except Exception as exc:
            refused = insufficient_privilege(exc)
            if refused is None:
                raise
            click.echo(f"error: {mask(refused.message)}", err=True)
            ctx.exit(refused.exit_code)
        finally:
            logs.unconfigure()


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


# In the order they were always registered; ``mtm --help`` lists them sorted.
for command in (
    project.init,
    project.new,
    tenants.create,
    tenants.tenants_cmd,
    tenants.drop,
    migrate.migrate,
    migrate.up,
    migrate.status,
    migrate.down,
    migrate.stamp,
    repair.repair,
    migrate.history,
    migrate.validate,
    drift.diff,
    tenants.role,
    project.db,
    lifecycle.domains,
    lifecycle.rename,
    clone.clone,
    clone.seed,
    review.sql,
    review.lint,
    adopt.adopt,
    transfer.export,
    transfer.import_,
    placement.move,
    placement.rebalance,
    distribute.distribute,
):
    cli.add_command(command)
del command
tenants.role.add_command(lifecycle.role_add)
tenants.role.add_command(lifecycle.role_remove)


# The cyclic garbage collector's first threshold in a command's process (Python's default:
# 700 allocations). A command frees nearly everything it makes by reference counting, yet
# at the default the collector ran hundreds of times while SQLAlchemy was imported and
# 10,000 rows were read, and each run of its older generations walked every object those
# imports made: 40-130 ms of a read command at 10,000 tenants on a slow machine, 10-20%
# of it (docs/performance.md, "Fifth round"). Garbage in cycles is still collected, only
# in larger batches. Set by ``main`` alone: a process that imports mtm keeps its own.
GC_THRESHOLD = 50_000


def main() -> None:
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    cli(prog_name="mtm")
