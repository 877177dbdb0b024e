"""``mtm distribute``: a single-server fleet's tenant schemas made Citus distributed schemas."""

from __future__ import annotations

import click

from ..words import plural
from .shared import config_of


@click.command()
@click.option("--tenant", "tenants", multiple=True, help="Distribute this tenant (repeatable).")
@click.option("--all", "all_tenants", is_flag=True, help="Distribute every tenant.")
@click.pass_context
def distribute(ctx: click.Context, tenants: tuple[str, ...], all_tenants: bool) -> None:
    """On a Citus cluster, make tenant schemas distributed schemas (citus_schema_distribute),
    one at a time under each tenant's lock; tenants already distributed are skipped."""
    from .. import commands

    def show(schema: str, done: bool) -> None:
        click.echo(f"{schema}: {'distributed' if done else 'already distributed'}")

    result = commands.distribute(
        config_of(ctx), tenants=list(tenants) or None, all_tenants=all_tenants, show=show
    )
    click.echo(
        f"{plural(len(result.distributed), 'tenant')} distributed, "
        f"{len(result.already)} already distributed in {result.seconds:.2f}s"
    )
