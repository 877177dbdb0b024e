"""``validate``'s checks: applied migrations against the files, the registry against
the schemas, and the state summary against the ledgers.

Every ledger is read, but most only as the server's fingerprint of it (``ledgerscan``):
a ledger whose fingerprint and row count are those of a prefix of the files holds
exactly those rows, so it is planned from that prefix; the others are read row by row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .config import Config
from .ledger import PUBLIC, read_ledgers, read_states
from .ledgerscan import NO_LEDGER, Another, LedgerSum, ledger_sums, ledger_tables
from .migrations import MigrationSet, Namespace
from .plan import plan_from_ledger, prefix_fingerprints, prefix_planner
from .planner import Tables, tenant_rows
from .results import ValidateResult
from .schemas import existing_schemas
from .sqlrun import Conn


def audit(
    conn: Conn, config: Config, mset: MigrationSet, tables: Tables, *, another: Another
) -> ValidateResult:
    """Every problem found, one line each, prefixed with its schema (``another`` opens a
    second connection to read ledgers on)."""
    result = ValidateResult(adopted=[m.path.name for m in mset if m.legacy])
    registered = [s for s, _ in tenant_rows(conn, config, tables, None)]
    schemas = [PUBLIC, *registered]
    found = ledger_tables(conn, config)
    sums = ledger_sums(another, conn, config, [s for s in schemas if s in found.ledgers])
    result.schemas_checked = len(schemas)
    result.problems += _ledger_problems(conn, config, mset, schemas, sums)
    present = existing_schemas(conn)
    for schema in registered:
        if schema not in present:
            result.problems.append(f"{schema}: registered tenant has no schema")
    orphans = sorted(found.named - {PUBLIC} - set(registered))
    for schema in orphans:
        result.problems.append(f"{schema}: schema has a ledger but no registry row")
    if not tables["state"]:
        return result
    states = read_states(conn, config)
    for schema in schemas:
        actual = sums.get(schema, NO_LEDGER)
        if schema in states and states[schema] != actual.fingerprint:
            result.problems.append(
                f"{schema}: state summary disagrees with the ledger (run 'mtm migrate' "
                "to rewrite it)"
            )
        elif schema not in states and actual.rows:
            result.problems.append(f"{schema}: ledger has no state summary")
    for schema in sorted(set(states) - set(schemas) - set(orphans)):
        result.problems.append(f"{schema}: state summary of a schema that is not registered")
    return result


def _ledger_problems(
    conn: Conn,
    config: Config,
    mset: MigrationSet,
    schemas: Sequence[str],
    sums: Mapping[str, LedgerSum],
) -> list[str]:
    """Each schema's disagreements with the files, in the order of ``schemas``."""
    prefixes = {ns: prefix_fingerprints(mset.of(ns)) for ns in ("public", "tenant")}
    planners = {ns: prefix_planner(ns, mset.of(ns)) for ns in ("public", "tenant")}
    found: dict[str, list[str]] = {}
    slow: list[str] = []
    for schema in schemas:
        ns: Namespace = "public" if schema == PUBLIC else "tenant"
        summed = sums.get(schema, NO_LEDGER)
        k = prefixes[ns].get(summed.fingerprint)
        if k is None or k != summed.rows or summed.ambiguous:
            slow.append(schema)
        else:
            found[schema] = planners[ns](schema, k).problems
    ledgers = read_ledgers(conn, config, slow) if slow else {}
    for schema in slow:
        ns = "public" if schema == PUBLIC else "tenant"
        found[schema] = plan_from_ledger(schema, ns, mset.of(ns), ledgers[schema]).problems
    return [p for schema in schemas for p in found[schema]]
