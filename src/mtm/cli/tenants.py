"""The tenant commands: create, tenants, drop, and the role group (rotate)."""

from __future__ import annotations

from typing import Any

import click

from ..words import plural
from .existing import existing_options, run_existing
from .shared import config_of, console


@click.command()
@click.argument("schema", required=False)
@click.option("--domain", "domains", multiple=True, help="A host name of the tenant (repeatable).")
@click.option("--name", help="Display name of the tenant.")
@click.option("--no-migrate", is_flag=True, help="Create the schema without applying migrations.")
@click.option("--no-seed", is_flag=True, help="Do not run the configured seed (config: seed).")
@click.option(
    "--role",
    is_flag=True,
    help="Also create a PostgreSQL role that can use only this tenant's schema.",
)
@click.option(
    "--login",
    is_flag=True,
    help="Let the tenant's role log in, with a generated password (needs --role).",
)
@click.option(
    "--password-file",
    help="Write the login role's password to this file (mode 0600) instead of printing it.",
)
@existing_options
@click.pass_context
def create(
    ctx: click.Context,
    /,
    schema: str | None,
    domains: tuple[str, ...],
    name: str | None,
    no_migrate: bool,
    no_seed: bool,
    role: bool,
    login: bool,
    password_file: str | None,
    **existing: Any,
) -> None:
    """Register tenant SCHEMA, create its schema and apply every tenant migration, in one
    transaction. With --existing, register schemas that are already there instead.

    Longer than most: its twelve options (five of them --existing's) take a line each.
    """
    from .. import commands
    from ..errors import UsageError

    if any(existing.values()):
        unused = {"--no-migrate": no_migrate, "--role": role, "--login": login}
        unused["--password-file"] = password_file is not None
        return run_existing(
            ctx, schema, domains, name, [k for k, v in unused.items() if v], **existing
        )
    if schema is None:
        raise UsageError("name the tenant's schema: mtm create SCHEMA")

    result = commands.create(
        config_of(ctx),
        schema,
        domains=domains,
        name=name,
        migrate=not no_migrate,
        role=role,
        login=login,
        password_file=password_file,
        seed=not no_seed,
    )
    if n := len(result.public_applied):
        click.echo(f"applied {plural(n, 'pending public migration')} first")
    click.echo(
        f"created tenant {result.tenant.schema} with {plural(len(result.applied), 'migration')} "
        f"in {result.seconds:.2f}s"
        + (f" (domains: {', '.join(result.tenant.domains)})" if result.tenant.domains else "")
        + (f" and role {result.role}" if result.role else "")
    )
    _show_password(result.role, result.password, result.password_file)


def _show_password(role: str | None, password: str | None, path: Any) -> None:
    """The one place a login role's password is shown: on stdout, or where it went."""
    if password is not None:
        click.echo(f"password of role {role} (shown only now): {password}")
    elif path is not None:
        click.echo(f"password of role {role} written to {path} (mode 0600)")


@click.command("tenants")
@click.option("--match", metavar="GLOB", help="Only tenants whose name matches this shell glob.")
@click.option("--all", "list_all", is_flag=True, help="One row per tenant, however many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every tenant).")
@click.pass_context
def tenants_cmd(ctx: click.Context, match: str | None, list_all: bool, as_json: bool) -> None:
    """List tenants: schema, name, primary domain, domains, applied step, role, created.

    Shows the first 50 and how many more there are; --all or --json shows every one.
    """
    from .. import commands
    from ..jsonout import dump_json
    from ..tenantview import PAGE, tenants_data, tenants_more, tenants_table

    if as_json or list_all or match is not None:
        items = commands.tenant_overview(config_of(ctx), match)
        total = len(items)
    else:  # a page: only its rows are read
        items, total = commands.tenant_page(config_of(ctx), PAGE)
    if as_json:
        dump_json(tenants_data(items))
        return
    limit = None if list_all else PAGE
    console().print(tenants_table(items, limit=limit))
    if more := tenants_more(total, len(items[:limit])):
        click.echo(more)


@click.command()
@click.argument("schema")
@click.option("--yes", is_flag=True, help="Really drop the schema and all its data.")
@click.option(
    "--cascade-outside",
    is_flag=True,
    help="Also drop objects outside the schema that depend on it (views, foreign keys...).",
)
@click.pass_context
def drop(ctx: click.Context, schema: str, yes: bool, cascade_outside: bool) -> None:
    """Drop tenant SCHEMA: its schema with all data, and its registry row (needs --yes)."""
    from .. import commands

    result = commands.drop(config_of(ctx), schema, yes=yes, cascade_outside=cascade_outside)
    click.echo(f"dropped tenant {schema}" + (f" and role {result.role}" if result.role else ""))
    if result.outside:
        click.echo(f"also dropped, outside schema {schema}: {'; '.join(result.outside)}")


@click.group()
def role() -> None:
    """Tenant roles: add or remove one, and login credentials per tenant."""


@role.command("rotate")
@click.argument("schema")
@click.option(
    "--password-file",
    help="Write the new password to this file (mode 0600) instead of printing it.",
)
@click.option("--login", is_flag=True, help="Let a tenant role made without --login log in.")
@click.pass_context
def role_rotate(ctx: click.Context, schema: str, password_file: str | None, login: bool) -> None:
    """Give tenant SCHEMA's login role a new password; sessions already open keep running."""
    from .. import commands

    result = commands.rotate_role(config_of(ctx), schema, password_file=password_file, login=login)
    _show_password(result.role, result.password, result.password_file)
