"""Commands of tenants' placement on a Citus cluster: ``move`` and ``rebalance``
(``status`` shows each tenant's node through ``placement.nodes``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa

from ..config import Config
from ..errors import MtmError
from ..failures import describe_error
from ..locks import hold_schema, release_schema
from ..placement import (
    MoveResult,
    Node,
    RebalanceState,
    check_move,
    move,
    rebalance_start,
    rebalance_state,
)
from .base import session
from .lifecycle import registered

log = logging.getLogger("mtm.placement")

# How often ``rebalance`` asks Citus where its job is.
POLL_SECONDS = 1.0


def move_tenant(config: Config, tenant: str, to: str) -> MoveResult:
    """Move a tenant's schema (its tables and ledger) to node ``to`` online, under the
    tenant's lock, so that no migration, create or drop of it runs meanwhile. Checked
    under the lock first: the node, the schema distributed, a primary key everywhere."""
    target = Node.parse(to)
    with session(config) as (_, conn):
        schema = registered(conn, config, tenant).schema
        hold_schema(conn, schema)
        try:
            source = check_move(conn, schema, target)
            if source == target:
                return MoveResult(schema, source, target, False, 0.0)
            fields = {"schema": schema, "source": str(source), "target": str(target)}
            log.info(
                "moving %s from %s to %s",
                schema,
                source,
                target,
                extra={"event": "tenant.move.start", **fields},
            )
            started = time.perf_counter()
            try:
                move(conn, schema, target)
            except sa.exc.DBAPIError as exc:
                raise MtmError(
                    f"moving {schema} from {source} to {target} failed: {describe_error(exc)}; "
                    f"it stays on {source} (see SELECT * FROM citus_schemas on the coordinator)"
                ) from None
            duration_ms = round(1000 * (time.perf_counter() - started), 3)
            log.info(
                "moved %s to %s in %sms",
                schema,
                target,
                duration_ms,
                extra={"event": "tenant.move.end", "duration_ms": duration_ms, **fields},
            )
            return MoveResult(schema, source, target, True, duration_ms)
        finally:
            release_schema(conn, schema)


def rebalance(
    config: Config,
    *,
    wait: bool = True,
    progress: Callable[[RebalanceState], None] | None = None,
) -> RebalanceState | None:
    """Start Citus's rebalancer (a background job on the coordinator that moves tenant
    schemas between nodes online) and, with ``wait``, follow it until it ends, calling
    ``progress`` whenever its moves change. None when there is nothing to move."""
    with session(config) as (_, conn):
        try:
            job = rebalance_start(conn)
        except sa.exc.DBAPIError as exc:
            raise MtmError(f"Citus did not start the rebalancer: {describe_error(exc)}") from None
        if job is None:
            return None
        state = rebalance_state(conn, job)
        log.info(
            "rebalance job %s: %s moves",
            job,
            state.moves,
            extra={"event": "rebalance.start", "job": job, "moves": state.moves},
        )
        if progress is not None:
            progress(state)
        while wait and not state.done:
            time.sleep(POLL_SECONDS)
            now = rebalance_state(conn, job)
            if now != state and progress is not None:
                progress(now)
            state = now
        return state
