"""``mtm repair``: re-record an edited migration's checksum; ``--list`` shows the audit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from ..words import plural
from .shared import config_of, console

if TYPE_CHECKING:
    from ..checksum_repair import RepairChange, RepairRow
    from ..commands.repair import RepairResult
    from ..config import Config


@click.command()
@click.argument("name", required=False)
@click.option("--tenant", "tenants", multiple=True, help="Repair in this tenant (repeatable).")
@click.option("--all-tenants", is_flag=True, help="Repair in every tenant.")
@click.option("--public", is_flag=True, help="Repair in the public schema.")
@click.option("--yes", is_flag=True, help="Needed to change more than one schema.")
@click.option("--list", "list_", is_flag=True, help="Show the audit of past repairs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def repair(
    ctx: click.Context,
    name: str | None,
    tenants: tuple[str, ...],
    all_tenants: bool,
    public: bool,
    yes: bool,
    list_: bool,
    as_json: bool,
) -> None:
    """After a reviewed edit of applied migration NAME, record its file's new checksum
    where the old one is recorded (the old one kept in an audit row); runs nothing."""
    from .. import commands
    from ..errors import UsageError
    from ..report import dump_json

    config = config_of(ctx)
    if list_:
        if name is not None or all_tenants or len(tenants) > 1:
            raise UsageError("--list takes at most one --tenant or --public, and no NAME")
        return _list(config, tenants[0] if tenants else None, public, as_json)
    if name is None:
        raise UsageError("name the migration to repair: mtm repair NAME (or --list)")

    def show(changes: Sequence[RepairChange]) -> None:
        for c in changes:
            click.echo(_line(c, config.public_schema_display_name))

    result = commands.repair(
        config,
        name,
        tenants=list(tenants) or None,
        all_tenants=all_tenants,
        public=public,
        yes=yes,
        show=None if as_json else show,
    )
    if as_json:
        dump_json(_json(result))
    else:
        click.echo(
            f"repaired {plural(len(result.changes), 'schema')}; no migration was run "
            "(the old checksums are in 'mtm repair --list')"
        )


def _json(result: RepairResult) -> dict[str, object]:
    schemas = [
        {"schema": c.schema, "old_checksum": c.old, "new_checksum": c.migration.checksum}
        for c in result.changes
    ]
    return {"namespace": result.namespace, "name": result.name, "schemas": schemas}


def _line(c: RepairChange, display_name: str) -> str:
    """What repair will change in one schema, printed before it changes anything."""
    label = display_name if c.schema == "public" else c.schema
    return (
        f"{label}: re-record {c.migration.name}: checksum {c.old[:12]} -> "
        f"{c.migration.checksum[:12]}"
    )


def _list(config: Config, tenant: str | None, public: bool, as_json: bool) -> None:
    from .. import commands
    from ..report import dump_json

    rows = commands.repairs(config, tenant=tenant, public=public)
    if as_json:
        dump_json([r.__dict__ for r in rows])
    else:
        console().print(_table(rows, config.public_schema_display_name))


def _table(rows: Sequence[RepairRow], display_name: str) -> object:
    from rich.table import Table

    table = Table()
    for col in ("when", "schema", "migration", "old", "new", "by"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.repaired_at.strftime("%Y-%m-%d %H:%M:%S %Z"),
            display_name if r.schema == "public" else r.schema,
            r.migration,
            (r.old_checksum or "-")[:12],
            r.new_checksum[:12],
            r.repaired_by,
        )
    if not rows:
        return "no repairs recorded"
    return table
