"""Tenants' placement on a Citus cluster: ``move`` and ``rebalance``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..exits import Exit
from ..words import plural
from .shared import config_of

if TYPE_CHECKING:
    from ..placement import RebalanceState
    from ..results import StatusResult


@click.command()
@click.argument("tenant")
@click.option("--to", "to", required=True, metavar="HOST:PORT", help="The node to move it to.")
@click.pass_context
def move(ctx: click.Context, tenant: str, to: str) -> None:
    """Move a tenant to another node of a Citus cluster, online.

    Citus copies the tenant's schema (its tables and its ledger) with logical
    replication while the application keeps writing, then switches over. Runs under
    the tenant's lock; refused, before anything moves, for a node that is not in the
    cluster, a tenant that is not a distributed schema, or a table without a primary key.
    """
    from .. import commands

    result = commands.move_tenant(config_of(ctx), tenant, to)
    if not result.moved:
        click.echo(f"{result.schema} is on {result.target} already; nothing moved")
        return
    seconds = result.duration_ms / 1000
    click.echo(f"moved {result.schema} from {result.source} to {result.target} in {seconds:.1f}s")


def _line(state: RebalanceState) -> str:
    moves = plural(state.moves, "move")
    return f"rebalance job {state.job}: {state.state}, {state.moved} of {moves} done"


@click.command()
@click.option("--no-wait", is_flag=True, help="Start the rebalancer and return at once.")
@click.pass_context
def rebalance(ctx: click.Context, no_wait: bool) -> None:
    """Spread the tenants evenly over the nodes of a Citus cluster.

    Starts Citus's rebalancer, a background job on the coordinator that moves tenant
    schemas online, and reports its progress until it ends (--no-wait: only starts it;
    follow it with SELECT * FROM citus_rebalance_status()). Exit 1 if the job failed.
    """
    from .. import commands

    state = commands.rebalance(
        config_of(ctx), wait=not no_wait, progress=lambda s: click.echo(_line(s))
    )
    if state is None:
        click.echo("nothing to rebalance: the tenants are spread evenly already")
        return
    if no_wait:
        click.echo(
            f"rebalance job {state.job} runs in the background; follow it with "
            "SELECT * FROM citus_rebalance_status()"
        )
    elif state.state != "finished":
        click.echo(
            f"error: rebalance job {state.job} {state.state}: see "
            "SELECT * FROM citus_rebalance_status(true) on the coordinator",
            err=True,
        )
        ctx.exit(Exit.FAILED)


def nodes_line(result: StatusResult) -> str | None:
    """How many tenants each node holds, under ``status`` on a Citus cluster (the rows
    name each tenant's node; above 50 tenants only ``--all`` and ``--json`` show rows)."""
    if result.nodes is None:
        return None
    counts: dict[str, int] = {}
    for tenant in result.tenants:
        node = result.nodes.get(tenant.schema, "not distributed")
        counts[node] = counts.get(node, 0) + 1
    return "tenants per node: " + ", ".join(f"{n} {c:,}" for n, c in sorted(counts.items()))
