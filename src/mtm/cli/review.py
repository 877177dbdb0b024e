"""The review commands: sql (the SQL before it runs) and lint (what will hurt at scale)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..exits import Exit
from ..words import plural
from .shared import config_of

if TYPE_CHECKING:
    from ..lintrules import Finding


@click.command()
@click.argument("name", required=False)
@click.option("--tenant", metavar="SCHEMA", help="Render for this tenant's schema.")
@click.option("--public", is_flag=True, help="The public namespace, for the public schema.")
@click.option("--pending", is_flag=True, help="Only what is pending in that schema.")
@click.pass_context
def sql(
    ctx: click.Context, name: str | None, tenant: str | None, public: bool, pending: bool
) -> None:
    """Print the SQL of migrations as mtm would run them (no ledger statements).

    Tenant migrations by default, rendered for no tenant in particular: their search
    path is the psql variable :"schema" (psql -v schema=acme -f FILE). Python migrations
    are rendered with Alembic's offline mode.
    """
    from .. import commands
    from ..render import text

    config = config_of(ctx)
    sections = commands.sql(config, tenant=tenant, public=public, name=name, pending=pending)
    if not any(s.rendered for s in sections):
        click.echo("-- mtm: nothing to show: no migration selected")
        return
    click.echo(text(config, sections), nl=False)


@click.command()
@click.argument("names", nargs=-1)
@click.option("--pending", is_flag=True, help="Only migrations pending in some schema.")
@click.option("--rules", "list_rules", is_flag=True, help="List the rules and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--citus/--no-citus",
    default=None,
    help="Also the rules of tenants on a Citus cluster (default: when distributed = true).",
)
@click.pass_context
def lint(
    ctx: click.Context,
    names: tuple[str, ...],
    pending: bool,
    list_rules: bool,
    as_json: bool,
    citus: bool | None,
) -> None:
    """Flag what will hurt when migrations run on many schemas; exit 1 on findings.

    NAMES are migration names (public:NAME or tenant:NAME when both namespaces have
    one); all migrations by default. Silence a rule for one migration with a comment
    in its file: -- mtm-lint: disable=RULE (# in Python). The citus-* rules apply to
    tenant migrations when the config says distributed = true, or with --citus.
    """
    from .. import commands
    from ..lintrules import RULES
    from ..report import dump_json

    if list_rules:
        for rule in RULES.values():
            where = " (tenant migrations on a Citus cluster)" if rule.citus else ""
            click.echo(f"{rule.id}{where}: {rule.explanation}; instead: {rule.alternative}")
        return
    config = config_of(ctx)
    result = commands.lint(config, names=names, pending=pending, citus=citus)
    if as_json:
        dump_json(
            {
                "ok": result.ok,
                "checked": result.checked,
                "findings": [_finding_json(f) for f in result.findings],
            }
        )
    else:
        for finding in result.findings:
            click.echo(_finding_line(finding, config.root))
        summary = plural(len(result.findings), "finding")
        click.echo(f"{summary} in {plural(result.checked, 'migration')} checked")
    if not result.ok:
        ctx.exit(Exit.FAILED)


def _finding_line(finding: Finding, root: Path) -> str:
    path = Path(finding.path)
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    where = f"{shown}:{finding.line}" if finding.line is not None else str(shown)
    statement = f" [{finding.statement}]" if finding.statement else ""
    return f"{where}: {finding.rule}{statement}\n    {finding.message}"


def _finding_json(finding: Finding) -> dict[str, Any]:
    from ..lintrules import RULES

    rule = RULES[finding.rule]
    return {
        "rule": finding.rule,
        "namespace": finding.namespace,
        "migration": finding.migration,
        "path": finding.path,
        "line": finding.line,
        "statement": finding.statement,
        "detail": finding.detail,
        "explanation": rule.explanation,
        "alternative": rule.alternative,
    }
