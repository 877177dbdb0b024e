"""What the commands beyond create and migrate need to know about a Citus cluster.

On a Citus coordinator (schema-based sharding), a tenant schema may be a *distributed
schema*: its tables live on one worker and the coordinator routes every statement on
them there. Most commands work unchanged through the coordinator (docs/citus.md,
*Every command on a cluster*, says which, checked by tests/test_citus_commands.py);
this module holds the few things they do differently there, each asked before
anything changes:

* ``is_citus``: is this database a Citus cluster at all (the extension is there);
* ``distributed``: which of some schemas are distributed;
* ``run_each``: a script one statement per query there: Citus hands the query string
  of some DDL on to the workers, which refuse one that holds several statements
  (``ALTER TABLE ... ADD FOREIGN KEY`` to a reference table, as every ``pg_dump`` of
  such a table writes it: "cannot insert multiple commands into a prepared
  statement"), so ``import`` restores and ``diff`` builds its references this way;
* ``add_citus``: the extension in ``new --autogenerate``'s throwaway database, so that
  public migrations calling Citus's functions run there too;
* ``keep_local``: schemas this session makes stay on the coordinator, whatever the
  database's ``citus.enable_schema_based_sharding`` says: ``diff``'s throwaway
  references are built, read and dropped within one command, and a local schema has
  the same catalog fingerprint as a distributed one built by the same migrations;
* ``refuse_distributed``: one line, before anything changes, for a command that cannot
  do its work on a distributed schema, naming it and what to do instead (``role add``
  without ``--login``: Citus reaches the worker as the role, which must log in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import sqlrun, sqlscript
from .config import Config
from .database import checkout, create_engine, run_script
from .errors import MtmError
from .exits import Exit
from .sqlrun import Conn

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

CITUS_SQL = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"

# pg_dist_schema lists the distributed schemas (Citus 12+); an older Citus has none.
_DISTRIBUTED_SQL = """
SELECT n.nspname
FROM pg_catalog.pg_namespace n
JOIN pg_dist_schema d ON d.schemaid = n.oid
WHERE n.nspname = ANY(%(schemas)s)
ORDER BY n.nspname
"""

_HAS_SCHEMA_TABLE_SQL = "SELECT to_regclass('pg_catalog.pg_dist_schema') IS NOT NULL"


class ClusterRefusal(MtmError):
    """A command that cannot do its work on a distributed schema (nothing changed)."""

    exit_code = Exit.USAGE


def is_citus(conn: Conn) -> bool:
    """True when the Citus extension is installed in this database."""
    return bool(sqlrun.scalar(conn, CITUS_SQL))


def distributed(conn: Conn, schemas: Sequence[str]) -> list[str]:
    """Those of ``schemas`` that are Citus distributed schemas, sorted ([] off Citus)."""
    if not schemas or not is_citus(conn):
        return []
    if not sqlrun.scalar(conn, _HAS_SCHEMA_TABLE_SQL):
        return []
    rows = sqlrun.rows(conn, _DISTRIBUTED_SQL, {"schemas": list(schemas)})
    return [str(r[0]) for r in rows]


def run_each(conn: Connection, script: str | Sequence[str]) -> None:
    """``database.run_script``, but one statement per query on a Citus coordinator."""
    if not is_citus(conn):
        run_script(conn, script)
        return
    for part in [script] if isinstance(script, str) else script:
        for statement in sqlscript.split(part):
            sqlrun.driver(conn).execute(statement.text.encode("utf-8"), prepare=False)


def add_citus(config: Config) -> None:
    """The Citus extension in ``config``'s database (``new --autogenerate``'s throwaway
    one, made on a coordinator: its public migrations may call ``create_reference_table``,
    which works on a single node)."""
    engine = create_engine(config, pool_size=1, purpose="mtm autogenerate")
    try:
        with checkout(engine) as conn:
            conn.exec_driver_sql("SET client_min_messages TO warning")
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS citus")
    finally:
        engine.dispose()


def keep_local(conn: Connection) -> None:
    """Schemas this session creates stay on the coordinator (a no-op off Citus)."""
    if is_citus(conn):
        conn.exec_driver_sql("SET citus.enable_schema_based_sharding TO off")


def refuse_distributed(conn: Conn, schemas: Sequence[str], why: str, instead: str) -> None:
    """Raise a :class:`ClusterRefusal` naming the first distributed one of ``schemas``."""
    found = distributed(conn, schemas)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ClusterRefusal(f"{found[0]}{more} is a distributed schema: {why}; {instead}")


def refuse_nologin_role(conn: Conn, schema: str, role: str) -> None:
    """A tenant role that cannot log in is of no use on a distributed tenant: the
    coordinator reaches the worker as the role itself (after ``SET ROLE`` too), and the
    worker refuses a role without LOGIN."""
    refuse_distributed(
        conn,
        [schema],
        f"Citus reaches its worker as role {role}, and a role without LOGIN cannot get there",
        f"run 'mtm role add {schema} --login' (and let the coordinator authenticate as it "
        "on the workers: pg_dist_authinfo or a .pgpass on the coordinator)",
    )
