"""The commands that move a tenant between databases: export and import."""

from __future__ import annotations

import click

from ..words import plural
from .shared import config_of


@click.command("export")
@click.argument("schema")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--pg-dump", metavar="PATH", help="The pg_dump to use (of the server's version).")
@click.pass_context
def export(ctx: click.Context, schema: str, file: str, pg_dump: str | None) -> None:
    """Write tenant SCHEMA to FILE: its schema and data, ledger, registry row and domains."""
    from .. import commands

    result = commands.export_tenant(config_of(ctx), schema, file, pg_dump=pg_dump)
    click.echo(
        f"exported tenant {result.schema} to {result.path} ({result.size} bytes; "
        f"{plural(result.migrations, 'migration')} applied"
        + (f", the newest {result.applied})" if result.applied else ")")
    )


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--as", "as_name", metavar="NEW", help="The tenant's name here (default: the file's)."
)
@click.option(
    "--domain",
    "domains",
    multiple=True,
    help="The tenant's domains here instead of the file's (repeatable; the first is primary).",
)
@click.option("--pg-restore", metavar="PATH", help="The pg_restore to use.")
@click.pass_context
def import_(
    ctx: click.Context,
    file: str,
    as_name: str | None,
    domains: tuple[str, ...],
    pg_restore: str | None,
) -> None:
    """Restore the tenant of FILE (made by 'mtm export') here, in one transaction, and
    bring it to head if it is behind this project's migrations."""
    from .. import commands

    result = commands.import_tenant(
        config_of(ctx),
        file,
        as_name=as_name,
        domains=list(domains) if domains else None,
        pg_restore=pg_restore,
    )
    source = (
        f" (tenant {result.source_schema} in the file)"
        if result.source_schema != result.schema
        else ""
    )
    click.echo(
        f"imported tenant {result.schema}{source} at {result.applied or 'no migration'}"
        + (f" with domains {', '.join(result.domains)}" if result.domains else "")
    )
    if result.migrated:
        click.echo(
            f"brought it to head: {plural(len(result.migrated), 'migration')} "
            f"({', '.join(result.migrated)})"
        )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.source_role:
        click.echo(
            f"its role {result.source_role} was not carried (roles belong to the server): "
            f"run 'mtm role add {result.schema}' to give it one here"
        )
