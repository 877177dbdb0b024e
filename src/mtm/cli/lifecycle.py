"""The commands that change a tenant after its create: the domains group (add, remove,
list), rename, and role add / role remove (joined to the role group of ``tenants``)."""

from __future__ import annotations

import click

from ..words import plural
from .shared import config_of, console


@click.group()
def domains() -> None:
    """A tenant's domains after its create, and its primary domain."""


@domains.command("add")
@click.argument("schema")
@click.argument("hosts", nargs=-1, required=True)
@click.option(
    "--primary",
    is_flag=True,
    help="Make the first HOST the tenant's primary domain (it may already be the tenant's).",
)
@click.pass_context
def domains_add(ctx: click.Context, schema: str, hosts: tuple[str, ...], primary: bool) -> None:
    """Give tenant SCHEMA the domains HOSTS (the first one is primary if it had none)."""
    from .. import commands

    result = commands.domains_add(config_of(ctx), schema, hosts, primary=primary)
    if result.added:
        click.echo(
            f"added {plural(len(result.added), 'domain')} to tenant {result.schema}: "
            f"{', '.join(result.added)}"
        )
    if result.unchanged:
        click.echo(f"already of tenant {result.schema}: {', '.join(result.unchanged)}")
    _say_primary(result.primary_before, result.primary)


@domains.command("remove")
@click.argument("schema")
@click.argument("hosts", nargs=-1, required=True)
@click.pass_context
def domains_remove(ctx: click.Context, schema: str, hosts: tuple[str, ...]) -> None:
    """Take the domains HOSTS from tenant SCHEMA (its primary: the oldest left takes over)."""
    from .. import commands

    result = commands.domains_remove(config_of(ctx), schema, hosts)
    click.echo(
        f"removed {plural(len(result.removed), 'domain')} from tenant {result.schema}: "
        f"{', '.join(result.removed)}"
    )
    _say_primary(result.primary_before, result.primary)


def _say_primary(before: str | None, after: str | None) -> None:
    if before == after:
        return
    if after is None:
        click.echo("the tenant has no domain left, so no primary domain")
    elif before is None:
        click.echo(f"primary domain: {after}")
    else:
        click.echo(f"primary domain: {after} (was {before})")


@domains.command("list")
@click.argument("schema", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def domains_list(ctx: click.Context, schema: str | None, as_json: bool) -> None:
    """List every tenant's domains, or tenant SCHEMA's, its primary first."""
    from .. import commands
    from ..report import dump_json
    from ..tenantview import domains_data, domains_table

    items = commands.domains_list(config_of(ctx), schema)
    if as_json:
        dump_json(domains_data(items))
    else:
        console().print(domains_table(items))


@click.command()
@click.argument("old")
@click.argument("new")
@click.pass_context
def rename(ctx: click.Context, old: str, new: str) -> None:
    """Rename tenant OLD to NEW: schema, registry row, domains, state and role, in one
    transaction (refused while a migrate runs)."""
    from .. import commands

    result = commands.rename(config_of(ctx), old, new)
    click.echo(
        f"renamed tenant {result.old} to {result.new}"
        + (f" and role {result.old_role} to {result.role}" if result.role else "")
    )


@click.command("add")
@click.argument("schema")
@click.option(
    "--login",
    is_flag=True,
    help="Let the role log in, with a generated password.",
)
@click.option(
    "--password-file",
    help="Write the login role's password to this file (mode 0600) instead of printing it.",
)
@click.pass_context
def role_add(ctx: click.Context, schema: str, login: bool, password_file: str | None) -> None:
    """Give tenant SCHEMA the role 'create --role' makes, with grants on what it has."""
    from .. import commands
    from .tenants import _show_password

    result = commands.role_add(config_of(ctx), schema, login=login, password_file=password_file)
    click.echo(f"added role {result.role} to tenant {result.schema}")
    _show_password(result.role, result.password, result.password_file)


@click.command("remove")
@click.argument("schema")
@click.pass_context
def role_remove(ctx: click.Context, schema: str) -> None:
    """Drop the role mtm made for tenant SCHEMA, with its privileges."""
    from .. import commands

    result = commands.role_remove(config_of(ctx), schema)
    click.echo(f"removed role {result.role} of tenant {result.schema}")
