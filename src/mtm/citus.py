"""Citus: is this database a cluster, and are new tenant schemas distributed?

On a Citus cluster (schema-based sharding, Citus 12 and later) a tenant schema can be a
*distributed schema*: its tables live together on one worker and the coordinator routes
every query for it there. mtm talks only to the coordinator. The ``distributed`` key
decides what ``mtm create`` makes: unset, it is detected (distributed when the database
has the ``citus`` extension and at least one active worker); ``true`` requires Citus
(refused, naming the key, without it); ``false`` keeps plain schemas on the coordinator
even on a cluster. The rest of mtm runs unchanged through the coordinator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import sqlrun
from .config import Config
from .errors import ConfigError
from .identifiers import quote_literal
from .sqlrun import Conn

log = logging.getLogger("mtm.citus")

SHARDING = "citus.enable_schema_based_sharding"


@dataclass(frozen=True)
class Cluster:
    """What the database says about Citus: its version and its active workers."""

    version: str | None  # the citus extension's version; None: not installed
    workers: int = 0

    @property
    def installed(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class Mode:
    """Whether new tenant schemas are distributed, and why (one line for people)."""

    cluster: Cluster
    distributed: bool
    reason: str
    problem: str | None = None  # distributed = true without Citus: refused by ``check``

    def check(self) -> Mode:
        """This mode, or the ConfigError of a configuration the database cannot honour."""
        if self.problem:
            raise ConfigError(self.problem)
        return self

    def sharding_sql(self) -> list[str]:
        """``SET LOCAL`` of schema-based sharding for a create's transaction: on when
        distributed, off on a cluster configured ``distributed = false`` (a database-wide
        ``on`` would distribute the schema anyway), nothing without Citus."""
        if not self.cluster.installed:
            return []
        return [f"SET LOCAL {SHARDING} TO {'on' if self.distributed else 'off'}"]


def cluster(conn: Conn) -> Cluster:
    """The citus extension's version and the number of active primary workers."""
    version = sqlrun.scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'citus'")
    if version is None:
        return Cluster(None)
    workers = sqlrun.scalar(
        conn,
        "SELECT count(*) FROM pg_dist_node "
        "WHERE isactive AND noderole = 'primary' AND groupid <> 0",
    )
    return Cluster(str(version), int(workers or 0))


def mode(conn: Conn, config: Config) -> Mode:
    """What ``mtm create`` makes on this database under ``config``'s ``distributed``
    (``check`` it before relying on it)."""
    found = cluster(conn)
    if config.distributed is False:
        return Mode(found, False, "tenant schemas are plain schemas (distributed = false)")
    where = f"Citus {found.version}, {found.workers} worker(s)"
    if config.distributed is True:
        if not found.installed:
            problem = (
                "distributed = true, but this database has no citus extension: "
                "run CREATE EXTENSION citus on every node, or set distributed = false"
            )
            return Mode(found, True, problem, problem)
        return Mode(found, True, f"tenant schemas are distributed ({where}; distributed = true)")
    if found.installed and found.workers:
        return Mode(found, True, f"tenant schemas are distributed ({where}; detected)")
    if found.installed:
        return Mode(found, False, f"tenant schemas are plain schemas ({where}; detected)")
    return Mode(found, False, "tenant schemas are plain schemas (no Citus; detected)")


def announce(mode: Mode) -> None:
    """The mode as one INFO record (shown at -v)."""
    log.info(
        "%s",
        mode.reason,
        extra={
            "event": "citus.mode",
            "distributed": mode.distributed,
            "citus": mode.cluster.version,
            "workers": mode.cluster.workers,
        },
    )


def is_distributed(conn: Conn, schema: str) -> bool:
    """Whether ``schema`` is a distributed schema (False without Citus)."""
    if not cluster(conn).installed:
        return False
    found = sqlrun.rows(
        conn,
        "SELECT 1 FROM pg_dist_schema d JOIN pg_namespace n ON n.oid = d.schemaid "
        "WHERE n.nspname = %(s)s",
        {"s": schema},
    )
    return bool(found)


def distribute_sql(schema: str) -> str:
    """Make an existing schema a distributed schema (Citus moves its tables to a worker)."""
    return f"SELECT citus_schema_distribute({quote_literal(schema)})"
