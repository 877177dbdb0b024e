"""Renaming a tenant: the statements of its one transaction.

Under both names' schema locks: the schema, its registry row (its domains follow by
the foreign key's ON UPDATE CASCADE), its state row, its repair audit rows and, given
``role_sql`` (``roles.rename_role_sql``), its role. The ledger lives in the schema and
moves with it; privileges, default privileges and column defaults refer to the schema
and the role by oid, so they follow too. What refers to the old name as text (a
function body, a ``search_path`` set by hand) does not.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import Config
from .identifiers import quote_ident, quote_literal
from .ledger import state_ref
from .locks import schema_lock_sql
from .registry import expect_registered_sql, tenant_ref
from .tables import repairs_ref


def rename_sql(config: Config, old: str, new: str, role_sql: Sequence[str] = ()) -> list[str]:
    """The rename of tenant ``old`` to ``new`` as one transaction; nothing of it holds
    unless all of it does."""
    o, n = quote_literal(old), quote_literal(new)
    return [
        "BEGIN",
        schema_lock_sql(old),
        schema_lock_sql(new),
        expect_registered_sql(config, old),
        f"ALTER SCHEMA {quote_ident(old)} RENAME TO {quote_ident(new)}",
        f"UPDATE {tenant_ref(config)} SET schema_name = {n}, updated_at = now() "
        f"WHERE schema_name = {o}",
        f"UPDATE {state_ref(config)} SET schema_name = {n} WHERE schema_name = {o}",
        f"UPDATE {repairs_ref(config)} SET schema_name = {n} WHERE schema_name = {o}",
        *role_sql,
        "COMMIT",
    ]
