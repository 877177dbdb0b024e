"""Connections bound to a tenant's schema, for applications."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .identifiers import quote_ident, validate_schema_name


@contextmanager
def tenant_connection(engine: Engine, schema: str) -> Iterator[Connection]:
    """A connection whose search_path is ``schema`` then public; restored afterwards.

    The schema name is validated and quoted; the previous search_path is put back before
    the connection returns to the pool, so the next user never inherits the tenant.
    """
    schema = validate_schema_name(schema)
    with engine.connect() as conn:
        previous = conn.execute(sa.text("SELECT current_setting('search_path')")).scalar()
        conn.execute(sa.text(f"SET search_path TO {quote_ident(schema)}, public"))
        try:
            yield conn
        finally:
            if conn.in_transaction():
                conn.rollback()
            conn.execute(sa.text("SELECT set_config('search_path', :p, false)"), {"p": previous})
            if conn.in_transaction():
                conn.commit()
