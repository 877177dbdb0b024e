"""Where tenants live on a Citus cluster, and moving them: the node of each distributed
tenant schema, the checks before a move, the move itself, Citus's rebalancer.

On a Citus cluster (schema-based sharding) every table of a distributed schema lives on
one worker node; the coordinator keeps mtm's registry and routes each query there. A
tenant's ledger is a table of its schema, so it lives and moves with the tenant's data.
Nodes are read from Citus's metadata tables (``pg_dist_*``) on the coordinator, in one
query for any number of tenants: the ``citus_shards`` view would also ask every worker
for the size of every shard.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import sqlrun
from .database import APART
from .errors import TenantError, UsageError
from .sqlrun import Conn

log = logging.getLogger("mtm.placement")

# Online moves copy a schema's tables with logical replication while writes go on, and
# block writes only for the switch. ``auto`` does that when every table has a primary key
# or replica identity and refuses otherwise, which mtm checks first to name the table;
# Citus's refusal is left as a second guard (a table made outside mtm). ``force_logical``
# would move such a table with its UPDATEs and DELETEs failing until the move ends;
# ``block_writes`` blocks every write for the whole copy.
TRANSFER_MODE = "auto"


def on_citus(conn: Conn) -> bool:
    """Whether the database has the Citus extension (mtm then talks to a coordinator):
    as noted when mtm's engine opened the connection (``database.APART``), else asked."""
    noted = sqlrun.notes(conn).get(APART)
    if noted is not None:
        return bool(noted)
    return bool(sqlrun.rows(conn, "SELECT 1 FROM pg_extension WHERE extname = 'citus'"))


@dataclass(frozen=True, order=True)
class Node:
    """A node of the cluster, as Citus names it: host and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Node:
        """``HOST:PORT`` (the form ``mtm status`` shows) or refuse it in one line."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--to {text!r} is not a node: give HOST:PORT, as 'mtm status' shows")
        return cls(host, int(port))


# The node of each distributed schema: the placement of any one of its shards (they are
# all on one node, being colocated).
_NODES = """
SELECT n.nspname, node.nodename, node.nodeport
FROM pg_dist_schema ds
JOIN pg_namespace n ON n.oid = ds.schemaid
JOIN LATERAL (
    SELECT pl.groupid FROM pg_dist_partition pp
    JOIN pg_dist_shard sh ON sh.logicalrelid = pp.logicalrelid
    JOIN pg_dist_placement pl ON pl.shardid = sh.shardid
    WHERE pp.colocationid = ds.colocationid LIMIT 1
) g ON true
JOIN pg_dist_node node ON node.groupid = g.groupid AND node.noderole = 'primary'
WHERE n.nspname = ANY(%(s)s)
"""


def nodes(conn: Conn, schemas: Sequence[str]) -> dict[str, Node] | None:
    """The node of each of ``schemas`` that is distributed; None on a server without
    Citus (a plain server has no nodes to show)."""
    if not on_citus(conn):
        return None
    if not schemas:
        return {}
    rows = sqlrun.rows(conn, _NODES, {"s": list(schemas)})
    return {r[0]: Node(r[1], int(r[2])) for r in rows}


def active_nodes(conn: Conn) -> list[Node]:
    """The cluster's active primary nodes that may hold tenants, the coordinator aside
    unless it was told to hold shards."""
    rows = sqlrun.rows(
        conn,
        "SELECT nodename, nodeport FROM pg_dist_node WHERE isactive "
        "AND noderole = 'primary' AND shouldhaveshards ORDER BY nodename, nodeport",
    )
    return [Node(r[0], int(r[1])) for r in rows]


def tables_without_primary_key(conn: Conn, schema: str) -> list[str]:
    """The tables of ``schema`` with no primary key: while an online move copies them,
    their UPDATEs and DELETEs would fail (logical replication needs a key to send)."""
    rows = sqlrun.rows(
        conn,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid "
        "AND k.contype = 'p') ORDER BY c.relname",
        {"s": schema},
    )
    return [r[0] for r in rows]


def check_move(conn: Conn, schema: str, to: Node) -> Node:
    """Refuse a move Citus would refuse or that would not be online, naming why; the
    tenant's node now."""
    if not on_citus(conn):
        raise UsageError(
            "mtm move needs a Citus cluster: this database has no citus extension "
            "(a tenant on one server has nowhere to move)"
        )
    known = active_nodes(conn)
    if to not in known:
        listed = ", ".join(str(n) for n in known) or "none"
        raise UsageError(
            f"{to} is not a node of this cluster that holds tenants (nodes: {listed}); "
            "see 'mtm status'"
        )
    now = nodes(conn, [schema]) or {}
    if schema not in now:
        raise TenantError(
            f"tenant {schema} is not a distributed schema, so Citus cannot move it "
            f"(distribute it first: SELECT citus_schema_distribute('{schema}'))"
        )
    missing = tables_without_primary_key(conn, schema)
    if missing:
        raise TenantError(
            f"table {schema}.{missing[0]} has no primary key: an online move needs one on "
            f"every table ({', '.join(missing)}); add one in a tenant migration, then move"
        )
    return now[schema]


def move(conn: Conn, schema: str, to: Node) -> None:
    """Move ``schema`` to ``to`` with ``citus_schema_move``, online. The caller holds the
    tenant's lock and has called ``check_move``."""
    sqlrun.rows(
        conn,
        "SELECT citus_schema_move(CAST(%(s)s AS regnamespace), %(h)s, %(p)s, %(m)s)",
        {"s": schema, "h": to.host, "p": to.port, "m": TRANSFER_MODE},
    )


@dataclass(frozen=True)
class RebalanceState:
    """Where Citus's background rebalance job is: its state and its moves by state."""

    job: int
    state: str  # scheduled, running, finished, cancelling, cancelled, failing, failed
    tasks: dict[str, int]

    @property
    def done(self) -> bool:
        return self.state in ("finished", "cancelled", "failed")

    @property
    def moves(self) -> int:
        return sum(self.tasks.values())

    @property
    def moved(self) -> int:
        return self.tasks.get("done", 0)


def rebalance_start(conn: Conn) -> int | None:
    """Start Citus's rebalancer as a background job; its id, None if nothing to move.
    Refused while one runs (Citus would refuse too, in three lines of its own)."""
    if not on_citus(conn):
        raise UsageError(
            "mtm rebalance needs a Citus cluster: this database has no citus extension"
        )
    running = sqlrun.scalar(
        conn,
        "SELECT min(job_id) FROM pg_dist_background_job WHERE job_type = 'rebalance' "
        "AND state IN ('scheduled', 'running', 'cancelling', 'failing')",
    )
    if running is not None:
        raise UsageError(
            f"Citus's rebalancer is running already (job {running}): follow it with "
            "SELECT * FROM citus_rebalance_status(), or wait for it with "
            "SELECT citus_rebalance_wait()"
        )
    job = sqlrun.scalar(
        conn,
        "SELECT citus_rebalance_start("
        "shard_transfer_mode => CAST(%(m)s AS citus.shard_transfer_mode))",
        {"m": TRANSFER_MODE},
    )
    return None if job is None else int(job)


def rebalance_state(conn: Conn, job: int) -> RebalanceState:
    """The job's state, from Citus's background job tables."""
    found = sqlrun.rows(
        conn, "SELECT state::text FROM pg_dist_background_job WHERE job_id = %(j)s", {"j": job}
    )
    if not found:
        raise UsageError(f"Citus has no background job {job}")
    tasks: dict[str, Any] = {
        r[0]: int(r[1])
        for r in sqlrun.rows(
            conn,
            "SELECT status::text, count(*) FROM pg_dist_background_task "
            "WHERE job_id = %(j)s GROUP BY 1",
            {"j": job},
        )
    }
    return RebalanceState(job, found[0][0], tasks)


@dataclass(frozen=True)
class MoveResult:
    """What ``mtm move`` did: the tenant, where it was, where it is (``moved`` False:
    it was there already)."""

    schema: str
    source: Node
    target: Node
    moved: bool
    duration_ms: float
