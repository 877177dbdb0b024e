"""The project commands: init, new, and the db group for the embedded PostgreSQL."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..errors import UsageError
from ..exits import Exit
from .shared import config_of, mask


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Write a commented mtm.toml and the migrations/public and migrations/tenant folders."""
    from .. import commands

    result = commands.init(directory)
    for path in result.created:
        click.echo(f"created {path}")


@click.command()
@click.argument("namespace", type=click.Choice(["public", "tenant"]))
@click.argument("message")
@click.option("--sql", is_flag=True, help="Write an SQL migration instead of a Python one.")
@click.option(
    "--autogenerate",
    is_flag=True,
    help="Write what the models (config: models) add to the schema at head (docs/authoring.md).",
)
@click.pass_context
def new(ctx: click.Context, namespace: str, message: str, sql: bool, autogenerate: bool) -> None:
    """Write a new migration file named with a UTC timestamp and a slug of MESSAGE."""
    from .. import commands

    if not autogenerate:
        click.echo(str(commands.new(config_of(ctx), namespace, message, sql=sql)))
        return
    if sql:
        raise UsageError("--autogenerate writes a Python migration: leave out --sql")
    from ..commands.autogenerate import new_from_models

    with _sigterm_as_interrupt():  # so that the throwaway database is dropped then too
        result = new_from_models(config_of(ctx), namespace, message)
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    if result.path is None:
        click.echo(f"nothing to change: the {namespace} models match the migrations")
    else:
        click.echo(str(result.path))


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, a stopped container) ends the block as Ctrl-C does,
    through ``finally`` clauses, instead of ending the process where it stands."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group()
def db() -> None:
    """The embedded PostgreSQL used when no database is configured."""


@db.command("start")
@click.pass_context
def db_start(ctx: click.Context) -> None:
    """Start the embedded server (initialising it on first use)."""
    from .. import commands

    click.echo(commands.db_start(config_of(ctx)))


@db.command("stop")
@click.pass_context
def db_stop(ctx: click.Context) -> None:
    """Stop the embedded server."""
    from .. import commands

    stopped = commands.db_stop(config_of(ctx))
    click.echo("stopped" if stopped else "not running")


@db.command("status")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Whether the embedded server runs, and where."""
    from .. import commands

    config = config_of(ctx)
    if config.database_url:
        click.echo(f"configured database: {mask(config.database_url)}")
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
    from .. import commands

    click.echo(commands.db_url(config_of(ctx)))
