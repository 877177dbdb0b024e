"""Commands about a tenant's domains after its create: ``domains_add``,
``domains_remove``, ``domains_list`` (see ``mtm.domains`` for the primary domain)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from .. import domains
from ..config import Config
from ..errors import TenantError, UsageError
from ..identifiers import validate_domains
from ..results import DomainsResult
from ..tables import existing
from .base import session
from .lifecycle import apply_change, registered

log = logging.getLogger("mtm.tenant")


def _hosts(hosts: Sequence[str]) -> list[str]:
    """The hosts validated and normalised as ``create`` does, each once, in order."""
    if isinstance(hosts, str):
        hosts = [hosts]
    if not hosts:
        raise UsageError("name at least one domain")
    return validate_domains(hosts)


def _refuse_taken(conn: Connection, config: Config, schema: str, hosts: list[str]) -> None:
    for host, owner in domains.owners(conn, config, hosts).items():
        if owner != schema:
            raise TenantError(f"domain {host!r} already belongs to tenant {owner!r}")


def domains_add(
    config: Config, schema: str, hosts: Sequence[str], *, primary: bool = False
) -> DomainsResult:
    """Give tenant ``schema`` more domains. The first host named becomes its primary
    domain with ``primary`` (it may already be the tenant's: that only moves the
    primary), or if the tenant had none. A host of another tenant is refused, naming it."""
    clean = _hosts(hosts)
    with session(config, purpose="mtm domains add") as (_, conn):
        tenant = registered(conn, config, schema)
        schema = tenant.schema
        _refuse_taken(conn, config, schema, clean)
        new = [h for h in clean if h not in tenant.domains]
        result = DomainsResult(schema, added=new, primary_before=tenant.primary_domain)
        result.unchanged = [h for h in clean if h in tenant.domains]
        moves = tenant.primary_domain != clean[0] and (primary or tenant.primary_domain is None)
        if new or moves:
            script = domains.add_sql(config, schema, new, clean[0], primary=primary)
            try:
                apply_change(conn, script, f"no domain was added to tenant {schema!r}")
            except Exception:
                _refuse_taken(conn, config, schema, clean)  # a host taken meanwhile: name it
                raise
        after = registered(conn, config, schema)
    result.primary = after.primary_domain
    log.info(
        "domains of tenant %s: added %s",
        schema,
        ", ".join(new) or "none",
        extra={"event": "tenant.domains.add", "schema": schema, "domains": new},
    )
    return result


def domains_remove(config: Config, schema: str, hosts: Sequence[str]) -> DomainsResult:
    """Take domains from tenant ``schema``. Removing its primary domain promotes its
    oldest remaining one (then by name); the result says which."""
    clean = _hosts(hosts)
    with session(config, purpose="mtm domains remove") as (_, conn):
        tenant = registered(conn, config, schema)
        schema = tenant.schema
        owned = domains.owners(conn, config, clean)
        for host in clean:
            if host not in owned:
                raise TenantError(f"domain {host!r} is not registered")
            if owned[host] != schema:
                raise TenantError(
                    f"domain {host!r} belongs to tenant {owned[host]!r}, not {schema!r}"
                )
        script = domains.remove_sql(config, schema, clean)
        apply_change(conn, script, f"no domain was removed from tenant {schema!r}")
        after = registered(conn, config, schema)
    log.info(
        "domains of tenant %s: removed %s",
        schema,
        ", ".join(clean),
        extra={"event": "tenant.domains.remove", "schema": schema, "domains": clean},
    )
    return DomainsResult(
        schema, removed=clean, primary=after.primary_domain, primary_before=tenant.primary_domain
    )


def domains_list(config: Config, schema: str | None = None) -> list[domains.Domain]:
    """Every tenant's domains, or one tenant's (refused if it is not registered)."""
    with session(config) as (_, conn):
        if schema is not None:
            schema = registered(conn, config, schema).schema
        elif not existing(conn, config)["registry"]:
            return []
        return domains.list_domains(conn, config, schema)
