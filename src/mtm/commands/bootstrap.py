"""mtm's own public tables: which exist, and creating the missing ones."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import roles
from ..config import Config
from ..database import run_script
from ..errors import ConfigError
from ..ledger import PUBLIC, ledger_ddl, ledger_ref, state_ddl, state_ref
from ..locks import schema_lock_sql
from ..registry import registry_ddl, tenant_ref


def _existing(conn: Connection, config: Config) -> dict[str, bool]:
    """Which of mtm's public tables exist; refuses a registry table mtm did not make."""
    row = conn.execute(
        sa.text(
            "SELECT to_regclass(:t) IS NOT NULL, to_regclass(:s) IS NOT NULL, "
            "to_regclass(:l) IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute "
            "WHERE attrelid = to_regclass(:t) AND attname = 'schema_name' AND NOT attisdropped)"
        ),
        {"t": tenant_ref(config), "s": state_ref(config), "l": ledger_ref(config, PUBLIC)},
    ).one()
    if row[0] and not row[3]:
        # e.g. the original multi-tenant-migrate's mapper table (id, domain, schema, ...)
        raise ConfigError(
            f"table {tenant_ref(config)} exists but is not an mtm tenant registry (it has no "
            "schema_name column); set tenant_table in the config to another name"
        )
    return {"registry": row[0], "state": row[1], "ledger": row[2]}


def ensure_bootstrap(conn: Connection, config: Config) -> None:
    """Create the registry, the state table and the public ledger if any is missing;
    let ``tenant_role_member`` read the registry."""
    if not all(_existing(conn, config).values()):
        statements = [*registry_ddl(config), state_ddl(config), ledger_ddl(config, PUBLIC)]
        run_script(
            conn,
            "BEGIN;\n" + schema_lock_sql(PUBLIC) + ";\n" + ";\n".join(statements) + ";\nCOMMIT",
        )
    roles.grant_registry_read(conn, config)
