"""Which schemas exist, which database: small questions to PostgreSQL's catalog."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def schema_exists(conn: Connection, schema: str) -> bool:
    return bool(
        conn.execute(
            sa.text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"),
            {"s": schema},
        ).scalar()
    )


def existing_schemas(conn: Connection) -> set[str]:
    return set(conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars().all())


def current_database(conn: Connection) -> str:
    return str(conn.execute(sa.text("SELECT current_database()")).scalar())
