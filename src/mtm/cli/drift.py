"""``mtm diff``: each tenant schema against a reference built at its step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..exits import Exit
from ..words import plural
from .shared import config_of

if TYPE_CHECKING:
    from ..drift import DiffResult, DriftGroup
    from ..publicdrift import PublicDrift

# How many tenants of a group the text output names before "and N more" (--json: all).
SHOWN = 10


@click.command()
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable).")
@click.option(
    "--public",
    is_flag=True,
    help="Compare the public schema too, with a reference built in a throwaway database "
    "(the role needs CREATEDB).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def diff(ctx: click.Context, tenants: tuple[str, ...], public: bool, as_json: bool) -> None:
    """Compare each tenant schema with a schema built at the same step.

    Tables, columns (types, nullability, defaults), constraints, indexes, sequences,
    views, functions, triggers, policies, enums and domains, read from pg_catalog
    without locking any table. A throwaway reference schema is built from the tenant
    migration files at each step present and dropped afterwards. With --public, the
    public schema (mtm's own tables aside) is compared with the public migrations
    applied in a throwaway database. Exit 1 when anything differs or a schema could
    not be compared.
    """
    from .. import commands
    from ..report import dump_json

    result = commands.diff(config_of(ctx), tenants=list(tenants) or None, public=public)
    if as_json:
        dump_json(to_json(result))
    else:
        for line in text(result):
            click.echo(line)
    if not result.ok:
        ctx.exit(Exit.FAILED)


def _step(group: DriftGroup) -> str:
    return f"step {group.step}" + (f" ({group.migration})" if group.migration else "")


def text(result: DiffResult) -> list[str]:
    """One paragraph per drifted group (its tenants, then each difference), the tenants
    not compared, and a summary line."""
    out = [
        f"dropped {schema}, a reference schema left behind by a diff that was killed"
        for schema in result.removed
    ]
    for group in result.drifted:
        names = list(group.tenants[:SHOWN])
        more = len(group.tenants) - len(names)
        listed = ", ".join(names) + (f" and {more} more" if more else "")
        verb = "differs" if len(group.tenants) == 1 else "differ"
        out.append(f"{plural(len(group.tenants), 'tenant')} at {_step(group)} {verb}: {listed}")
        out += [f"  {d}" for d in group.differences]
    out += result.not_compared
    out += _public(result.public)
    drifted = sum(len(g.tenants) for g in result.drifted)
    summary = (
        f"{plural(result.tenants_checked, 'tenant')} compared at "
        f"{plural(len(result.references), 'step')}: "
    )
    if drifted:
        summary += f"{drifted} differ ({plural(len(result.drifted), 'group')})"
    else:
        summary += "no differences"
    if result.not_compared:
        summary += f"; {plural(len(result.not_compared), 'problem')}"
    out.append(summary)
    return out


def _public(public: PublicDrift | None) -> list[str]:
    from ..publicdrift import NOT_ASKED

    if public is None:
        return [NOT_ASKED]
    at = f"step {public.step}" + (f" ({public.migration})" if public.migration else "")
    if public.problem is not None:
        return [f"public schema at {at}: not compared: {public.problem}"]
    if public.differences:
        return [f"public schema at {at} differs:"] + [f"  {d}" for d in public.differences]
    return [f"public schema at {at}: no differences"]


def to_json(result: DiffResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "tenants_checked": result.tenants_checked,
        "references": {str(k): v for k, v in result.references.items()},
        "groups": [
            {
                "step": g.step,
                "migration": g.migration,
                "fingerprint": g.fingerprint,
                "clean": g.clean,
                "tenants": list(g.tenants),
                "differences": [d.__dict__ for d in g.differences],
            }
            for g in result.groups
        ],
        "not_compared": result.not_compared,
        "removed": result.removed,
        "public": None
        if result.public is None
        else {
            "step": result.public.step,
            "migration": result.public.migration,
            "clean": result.public.clean,
            "differences": [d.__dict__ for d in result.public.differences],
            "problem": result.public.problem,
        },
    }
