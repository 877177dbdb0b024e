"""Which schemas exist, which database: small questions to PostgreSQL's catalog."""

from __future__ import annotations

from . import sqlrun
from .sqlrun import Conn


def schema_exists(conn: Conn, schema: str) -> bool:
    sql = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %(s)s)"
    return bool(sqlrun.scalar(conn, sql, {"s": schema}))


def existing_schemas(conn: Conn) -> set[str]:
    return {r[0] for r in sqlrun.rows(conn, "SELECT nspname FROM pg_namespace")}


def current_database(conn: Conn) -> str:
    return str(sqlrun.scalar(conn, "SELECT current_database()"))
