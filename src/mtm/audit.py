"""``validate``'s checks: applied migrations against the files, the registry against
the schemas, and the state summary against the ledgers."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from .config import Config
from .ledger import PUBLIC, orphan_ledgers, read_ledgers, read_states
from .migrations import MigrationSet, Namespace
from .plan import fingerprint, plan_from_ledger
from .planner import Tables, tenant_rows
from .results import ValidateResult
from .schemas import existing_schemas


def audit(conn: Connection, config: Config, mset: MigrationSet, tables: Tables) -> ValidateResult:
    """Every problem found, one line each, prefixed with its schema."""
    result = ValidateResult(adopted=[m.path.name for m in mset if m.legacy])
    registered = [s for s, _ in tenant_rows(conn, config, tables, None)]
    schemas = [PUBLIC, *registered]
    ledgers = read_ledgers(conn, config, schemas)
    result.schemas_checked = len(schemas)
    for schema in schemas:
        ns: Namespace = "public" if schema == PUBLIC else "tenant"
        result.problems += plan_from_ledger(schema, ns, mset.of(ns), ledgers[schema]).problems
    present = existing_schemas(conn)
    for schema in registered:
        if schema not in present:
            result.problems.append(f"{schema}: registered tenant has no schema")
    orphans = orphan_ledgers(conn, config, registered)
    for schema in orphans:
        result.problems.append(f"{schema}: schema has a ledger but no registry row")
    if not tables["state"]:
        return result
    states = read_states(conn, config)
    for schema in schemas:
        rows = ledgers[schema]
        actual = fingerprint((r.name, r.checksum) for r in rows)
        if schema in states and states[schema] != actual:
            result.problems.append(
                f"{schema}: state summary disagrees with the ledger (run 'mtm migrate' "
                "to rewrite it)"
            )
        elif schema not in states and rows:
            result.problems.append(f"{schema}: ledger has no state summary")
    for schema in sorted(set(states) - set(schemas) - set(orphans)):
        result.problems.append(f"{schema}: state summary of a schema that is not registered")
    return result
