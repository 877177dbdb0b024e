"""The commands that give a tenant its data: clone and seed."""

from __future__ import annotations

import click

from ..words import plural
from .shared import config_of


@click.command()
@click.argument("source")
@click.argument("schema")
@click.option(
    "--domain", "domains", multiple=True, help="A host name of the new tenant (repeatable)."
)
@click.option("--name", help="Display name of the new tenant.")
@click.option(
    "--data", is_flag=True, help="Also copy SOURCE's rows (one snapshot, one transaction)."
)
@click.pass_context
def clone(
    ctx: click.Context,
    source: str,
    schema: str,
    domains: tuple[str, ...],
    name: str | None,
    data: bool,
) -> None:
    """Create tenant SCHEMA at tenant SOURCE's exact step (not head), optionally with its
    rows, in one transaction. The seed does not run."""
    from .. import commands

    result = commands.clone(config_of(ctx), source, schema, domains=domains, name=name, data=data)
    step = result.applied[-1] if result.applied else "no migration"
    rows = ""
    if result.rows is not None:
        total = sum(result.rows.values())
        rows = f" and {plural(total, 'row')} in {plural(len(result.rows), 'table')}"
    click.echo(
        f"cloned tenant {source} into {schema} at {step} "
        f"({plural(len(result.applied), 'migration')}){rows} in {result.seconds:.2f}s"
        + (f" (domains: {', '.join(result.tenant.domains)})" if result.tenant.domains else "")
    )


@click.command()
@click.argument("schema")
@click.pass_context
def seed(ctx: click.Context, schema: str) -> None:
    """Run the configured seed again for tenant SCHEMA, in one transaction under its lock."""
    from .. import commands

    result = commands.seed(config_of(ctx), schema)
    click.echo(f"seeded tenant {schema} with {result.seed} in {result.seconds:.2f}s")
