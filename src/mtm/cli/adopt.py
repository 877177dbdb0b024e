"""``mtm adopt``: take over a database of the original multi-tenant-migrate tool."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..words import plural
from .shared import config_of

if TYPE_CHECKING:
    from ..results import AdoptResult


@click.command()
@click.option("--dry-run", is_flag=True, help="Print exactly what would change; change nothing.")
@click.option(
    "--reference",
    metavar="SCHEMA",
    help="The tenant whose step and structure every tenant takes, when they stand at "
    "different steps of the original tool's history (the others are listed).",
)
@click.option(
    "--include-rows",
    "include_rows",
    multiple=True,
    metavar="TABLE",
    help="Put this table's rows (in the reference schema) into the tenant baseline "
    "(repeatable); by default new tenants get structure only.",
)
@click.pass_context
def adopt(
    ctx: click.Context, dry_run: bool, reference: str | None, include_rows: tuple[str, ...]
) -> None:
    """Take over a database made by the original multi-tenant-migrate tool.

    Moves its mapper into mtm's registry and each ledger into mtm's (every .js file
    recorded under its mtm name, adopted, without a checksum), writes a baseline
    migration per namespace that new tenants run instead of the .js history, and keeps
    each legacy table as <name>_legacy. One transaction for the registry and public,
    one per tenant schema; run it again to finish an interrupted adoption.
    """
    from .. import commands

    result = commands.adopt(
        config_of(ctx),
        dry_run=dry_run,
        reference=reference,
        include_rows=list(include_rows),
        show=_show,
    )
    if result.nothing:
        click.echo("nothing to adopt: this database is mtm's already")
    elif dry_run:
        click.echo("dry run: nothing was changed")
    else:
        click.echo(
            f"adopted {plural(len(result.schemas), 'tenant schema')}"
            + ("" if result.resumed else " and public")
            + ": run 'mtm status' and 'mtm validate'"
        )


def _show(result: AdoptResult) -> None:
    """Every change, one line each, before any is made."""
    echo = click.echo
    ledger = result.ledger
    if result.resumed:
        echo("finishing an interrupted adoption (the registry and public are adopted)")
    else:
        tenants = _some([f"{s} ({', '.join(d)})" for s, d in result.moved]) or "none"
        echo(
            f'registry: {result.mapper} -> {result.mapper[:-1]}_legacy"; '
            f"{plural(len(result.moved), 'tenant')} into mtm's registry: {tenants}"
        )
        echo(
            f"public: ledger public.{ledger} -> public.{ledger}_legacy; records "
            f"{_names(result.public_record)} as adopted"
        )
    if result.schemas:
        echo(
            f"tenants {_some(result.schemas)}: ledger <schema>.{ledger} -> "
            f"<schema>.{ledger}_legacy; each records {_names(result.tenant_record)} as adopted"
        )
    for path in result.baselines:
        echo(f"baseline: {path} (new schemas run it in place of the .js history)")
    if result.reference:
        echo(f"reference: the tenant baseline is the structure of {result.reference}")
    if result.off_step:
        echo(f"not at {result.reference}'s step, recorded at it anyway: " + _some(result.off_step))
    if result.differ:
        echo(f"structure unlike {result.reference}'s (compare them): " + _some(result.differ))
    if result.rows_left or result.data_migrations:
        rows = ", ".join(result.rows_left) or "none"
        data = ", ".join(result.data_migrations) or "none seen"
        echo(
            f"rows: new tenants get structure only, not the rows of {rows} "
            f"(legacy migrations that write rows: {data}); --include-rows TABLE puts a "
            "table's rows into the baseline"
        )
    for warning in result.warnings:
        echo(f"warning: {warning}")


def _names(names: list[str]) -> str:
    if not names:
        return "nothing"
    return f"{plural(len(names), 'migration')} ({_some(names)})"


def _some(items: list[str], shown: int = 20) -> str:
    """A list of names, the first ``shown`` of a long one and how many more."""
    more = f" and {len(items) - shown:,} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
