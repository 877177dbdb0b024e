"""What an adoption will do, decided before anything changes (pure: no database).

The original tool's ledgers hold file names (``tenant:1546110701000-create-table-A.js``);
mtm records each under its own name (``1546110701000-create-table-A``), adopted and
without a checksum. Everything that would leave an adoption half-done is refused here,
one line each: a mapper row whose schema is missing, a ledger naming a file that is no
longer in the migrations folder, two domains that are one to mtm, tenants at different
steps of the legacy history (unless a reference schema is named), a legacy file that
no schema ran.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .adoption import LegacyDatabase
from .errors import InvalidName
from .identifiers import validate_domain, validate_schema_name
from .ledger import PUBLIC
from .migrations import BASELINE_MARKER, NAMESPACES, Migration, MigrationSet, Namespace
from .words import plural

# Statements a .js migration of the original tool writes rows with, as far as its text
# shows: the hint that new tenants will not get what it wrote.
_WRITES_ROWS = re.compile(
    r"\b(INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|bulkInsert|bulkUpdate|bulkDelete)\b",
    re.IGNORECASE,
)


def legacy_name(filename: str) -> tuple[Namespace, str] | None:
    """``tenant:1546110701000-create-table-A.js`` -> ("tenant", "1546110701000-create-table-A")."""
    prefix, sep, rest = filename.partition(":")
    if not sep or prefix not in NAMESPACES or not Path(rest).stem:
        return None
    return ("public" if prefix == "public" else "tenant"), Path(rest).stem


@dataclass(frozen=True)
class TenantMove:
    """A tenant as it enters mtm's registry: schema, domains, when created and updated."""

    schema: str
    domains: tuple[str, ...]
    created_at: datetime | None
    updated_at: datetime | None


@dataclass
class Checked:
    """The legacy database found fit to adopt: the registry rows to create, each
    namespace's history (the legacy files to record) and the schemas off its step."""

    moves: list[TenantMove]
    history: dict[Namespace, list[Migration]]
    reference: str | None
    steps: dict[str, list[str]] = field(default_factory=dict)
    off_step: list[str] = field(default_factory=list)


def check(
    legacy: LegacyDatabase, mset: MigrationSet, reference: str | None, mapper: str
) -> tuple[Checked, list[str]]:
    """What to adopt, and every problem that forbids it (``mapper`` names the mapper
    table in messages).

    Longer than most: one pass over the mapper, then the ledgers, then the steps,
    each check a few lines that add to the same list of problems.
    """
    problems: list[str] = []
    moves: dict[str, TenantMove] = {}
    owner: dict[str, tuple[str, str]] = {}
    for t in legacy.tenants:
        try:
            schema = validate_schema_name(t.schema)
            domain = validate_domain(t.domain)
        except InvalidName as exc:
            problems.append(f"{mapper}, row of schema {t.schema!r}: {exc.message}")
            continue
        if domain in owner:
            other, spelled = owner[domain]
            problems.append(
                f"{mapper}: domain {t.domain!r} of {schema} and {spelled!r} of {other} are one "
                "domain to mtm (host names are compared in lower case): remove one of the rows"
            )
            continue
        owner[domain] = (schema, t.domain)
        if legacy.unfinished is None and schema not in legacy.existing:
            problems.append(
                f"{mapper} lists tenant {schema} ({t.domain}) but schema {schema} does not "
                "exist: restore the schema or remove its row"
            )
        seen = moves.get(schema)
        domains = (*seen.domains, domain) if seen else (domain,)
        moves[schema] = TenantMove(schema, domains, t.created_at, t.updated_at)
    for ref in legacy.taken:
        problems.append(
            f"{ref} exists already: adopt keeps the original tool's tables under such names "
            "(rename or drop it)"
        )
    steps: dict[str, list[str]] = {}
    for schema, files in legacy.ledgers.items():
        ns: Namespace = "public" if schema == PUBLIC else "tenant"
        steps[schema] = []
        for filename in files:
            parsed = legacy_name(filename)
            found = mset.find(ns, parsed[1]) if parsed and parsed[0] == ns else None
            if parsed is None or parsed[0] != ns:
                problems.append(
                    f"{schema}: its ledger names {filename!r}, which is not a {ns} migration "
                    f"of the original tool ('{ns}:NAME.js')"
                )
            elif found is None or not found.legacy:
                problems.append(
                    f"{schema}: its ledger names {filename}, which is not in "
                    f"{mset.directory}: restore the file (mtm keeps the original tool's "
                    "files as history, never runs them)"
                )
            else:
                steps[schema].append(found.name)
    adopting = legacy.unfinished if legacy.unfinished is not None else list(moves)
    for schema in legacy.unfinished or []:
        if schema not in legacy.existing:
            problems.append(
                f"schema {schema}, still to adopt, does not exist: restore it (or delete "
                "its rows from mtm's registry and from the adoption marker by hand)"
            )
    tenant_steps = {s: steps.get(s, []) for s in adopting if s in legacy.existing}
    checked = Checked(list(moves.values()), {"public": [], "tenant": []}, reference, steps)
    if reference is not None and reference not in moves:
        problems.append(f"--reference {reference}: no such tenant in {mapper}")
        return checked, problems
    if legacy.unfinished is None:
        problems += _steps(checked, mset, tenant_steps, steps.get(PUBLIC, []))
    else:  # checked by the run that started it: each namespace's whole history
        checked.history = {ns: mset.legacy(ns) for ns in NAMESPACES}
    return checked, problems


def _steps(
    checked: Checked,
    mset: MigrationSet,
    tenant_steps: dict[str, list[str]],
    public_step: list[str],
) -> list[str]:
    """Tenants must stand at one step of the history (or take the reference's), and
    every legacy file must have been run by the schema whose step is adopted."""
    problems: list[str] = []
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for schema, names in tenant_steps.items():
        groups[tuple(names)].append(schema)
    reference = checked.reference
    if reference is None and len(groups) > 1:
        where = "; ".join(
            f"{', '.join(schemas[:3])}{' and more' if len(schemas) > 3 else ''} at "
            f"{step[-1] if step else 'no step'} ({plural(len(step), 'migration')})"
            for step, schemas in sorted(groups.items(), key=lambda g: (len(g[0]), g[0]))
        )
        problems.append(
            f"tenants are at different steps of the original tool's history: {where}; "
            "name the schema whose step and structure they all take with --reference SCHEMA"
        )
        return problems
    if reference is None and tenant_steps:
        reference = sorted(tenant_steps)[0]
    checked.reference = reference
    step = tenant_steps.get(reference, []) if reference else []
    checked.off_step = sorted(s for s, names in tenant_steps.items() if names != step)
    each: list[tuple[Namespace, list[str], str | None]] = [
        ("tenant", step, reference),
        ("public", public_step, PUBLIC),
    ]
    for ns, ran, who in each:
        files = mset.legacy(ns)
        never = [m for m in files if m.name not in ran]
        if never and who is None:
            problems.append(
                f"there is no tenant to take the structure of the {ns} history "
                f"({plural(len(files), 'legacy migration')}) from: register one with the "
                "original tool first, or remove the files"
            )
        elif never:
            problems.append(
                f"{never[0].path.name} is in {mset.directory} but {who} never ran it: run it "
                "with the original tool first, or remove the file"
            )
        checked.history[ns] = [m for m in files if m.name in ran]
    return problems


def data_migrations(history: Sequence[Migration]) -> list[str]:
    """The legacy files whose text writes rows (as far as it shows): what a baseline of
    structure does not give new tenants."""
    out = []
    for m in history:
        try:
            text = m.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if _WRITES_ROWS.search(text):
            out.append(m.path.name)
    return out


def baseline_path(directory: Path, namespace: Namespace, history: Sequence[Migration]) -> Path:
    """Where a namespace's baseline goes: beside its legacy files (the flat layout with
    prefixes, or the namespace's folder), named after the last of them so that it sorts
    right after it and before any migration written later (``mtm new``'s names are
    timestamps of now); the same name in a dry run as in the run."""
    name = f"{history[-1].name}-mtm-baseline" if history else "mtm-baseline"
    flat = not history or history[0].path.parent == directory
    return directory / f"{namespace}:{name}.sql" if flat else directory / namespace / f"{name}.sql"


def baseline_text(
    sql: str, namespace: Namespace, schema: str, history: Sequence[Migration], now: datetime
) -> str:
    """The baseline file: its marker, what it is, and the schema-neutral SQL."""
    last = history[-1].name if history else "none"
    body = sql.strip() or "SELECT 1;  -- the reference schema held nothing to build"
    return (
        f"{BASELINE_MARKER}\n"
        f"-- Written by mtm adopt on {now:%Y-%m-%d %H:%M} UTC: the structure of schema "
        f"{schema} after the original tool's {namespace} history\n"
        f"-- ({plural(len(history), 'migration')}, up to {last}). Adopted schemas record it "
        "as applied without\n"
        "-- running it; a schema created later runs it in place of that history, which it\n"
        "-- records as superseded. Do not edit it once it is applied.\n\n"
        f"{body}\n"
    )
