"""What will run where: applied ledger rows against the files, per schema (pure logic).

A schema's ledger is summarised by a fingerprint: the MD5 of its applied
``name:checksum`` pairs in name order. The same fingerprint computed over every prefix
of the files tells, from one number per schema, that a schema has applied exactly the
first k migrations, unedited. That is what lets ``migrate`` and ``status`` over 10,000
tenants answer from one query; anything that matches no prefix is read from its
ledger and planned in full.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from .migrations import Migration, Namespace


def fingerprint(pairs: Iterable[tuple[str, str]]) -> str:
    """MD5 of ``name:checksum`` joined by commas in code-point order of name.

    Must equal the SQL in ``ledger.state_upsert_sql`` (``ORDER BY name COLLATE "C"``);
    an adopted row, recorded without a checksum, is ``name:`` (its checksum is "").
    """
    text = ",".join(f"{name}:{checksum}" for name, checksum in sorted(pairs))
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def prefix_fingerprints(migrations: Sequence[Migration]) -> dict[str, int]:
    """Fingerprint of the first k migrations -> k, for k = 0..len(migrations)."""
    out: dict[str, int] = {}
    for k in range(len(migrations) + 1):
        out[fingerprint((m.name, m.checksum) for m in migrations[:k])] = k
    return out


@dataclass(frozen=True)
class LedgerRow:
    name: str
    checksum: str


@dataclass
class SchemaPlan:
    """One schema's position: what is applied, what is pending, what is wrong."""

    schema: str
    namespace: Namespace
    total: int
    applied: int
    last_applied: str | None
    pending: list[Migration] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    applied_pairs: tuple[tuple[str, str], ...] = ()

    @property
    def at_head(self) -> bool:
        return not self.pending and not self.problems


def legacy_problems(schema: str, pending: Sequence[Migration]) -> list[str]:
    """A pending file of the original tool is recorded only as superseded by a baseline
    pending after it (a schema created after an adoption); anywhere else it cannot run."""
    for i, m in enumerate(pending):
        if m.legacy and not any(later.baseline for later in pending[i + 1 :]):
            return [
                f"{schema}: {m.path.name} is a migration of the original tool, which mtm "
                "never runs (adopt the database with 'mtm adopt', or rewrite it as .py or .sql)"
            ]
    return []


def plan_from_prefix(
    schema: str, namespace: Namespace, migrations: Sequence[Migration], k: int
) -> SchemaPlan:
    """Plan for a schema known (by fingerprint) to have applied exactly the first k."""
    return prefix_planner(namespace, migrations)(schema, k)


def prefix_planner(
    namespace: Namespace, migrations: Sequence[Migration]
) -> Callable[[str, int], SchemaPlan]:
    """``plan_from_prefix`` for many schemas: what depends on k alone is worked out once
    per k, so 10,000 tenants at one step cost one plan's work and 10,000 small objects."""
    known: dict[int, tuple[str | None, tuple[Migration, ...], tuple[tuple[str, str], ...]]] = {}

    def plan(schema: str, k: int) -> SchemaPlan:
        if k not in known:
            pairs = tuple((m.name, m.checksum) for m in migrations[:k])
            known[k] = (migrations[k - 1].name if k else None, tuple(migrations[k:]), pairs)
        last, pending, pairs = known[k]
        return SchemaPlan(
            schema,
            namespace,
            len(migrations),
            k,
            last,
            list(pending),
            legacy_problems(schema, pending),
            pairs,
        )

    return plan


def plan_from_ledger(
    schema: str,
    namespace: Namespace,
    migrations: Sequence[Migration],
    ledger: Iterable[LedgerRow],
    *,
    allow_out_of_order: bool = False,
) -> SchemaPlan:
    """Plan a schema from its full ledger, naming every disagreement with the files."""
    files = {m.name: m for m in migrations}
    applied = {row.name: row for row in ledger}
    problems: list[str] = []
    for name in sorted(applied):
        migration = files.get(name)
        if migration is None:
            problems.append(f"{schema}: applied migration {name} has no file")
        elif migration.checksum != applied[name].checksum:
            problems.append(
                f"{schema}: migration {name} was edited after it was applied "
                f"({migration.path.name}: checksum {migration.checksum[:12]}, "
                f"applied {applied[name].checksum[:12]})"
            )
    pending = [m for m in migrations if m.name not in applied]
    problems += legacy_problems(schema, pending)
    newest = max(applied) if applied else None
    if newest is not None and not allow_out_of_order:
        for m in pending:
            if m.name < newest:
                problems.append(
                    f"{schema}: migration {m.name} sorts before {newest}, which is already "
                    "applied (use --allow-out-of-order to apply it anyway)"
                )
    return SchemaPlan(
        schema=schema,
        namespace=namespace,
        total=len(migrations),
        applied=len(applied),
        last_applied=newest,
        pending=pending,
        problems=problems,
        applied_pairs=tuple((row.name, row.checksum) for row in applied.values()),
    )


def revert_range(
    applied_newest_first: Sequence[str], *, steps: int | None = None, to: str | None = None
) -> list[str]:
    """Which applied migrations ``down`` reverts, newest first.

    ``steps`` reverts that many; ``to`` reverts everything applied after ``to``
    (``to`` itself stays applied).
    """
    if to is not None:
        if to not in applied_newest_first:
            raise ValueError(f"migration {to} is not applied")
        return list(applied_newest_first[: applied_newest_first.index(to)])
    return list(applied_newest_first[: steps if steps is not None else 1])


def past(plan: SchemaPlan, name: str) -> str | None:
    """The newest migration ``plan``'s schema has applied after ``name``, if any."""
    later = [n for n, _ in plan.applied_pairs if n > name]
    return max(later) if later else None


def stop_at(plan: SchemaPlan, name: str) -> SchemaPlan:
    """``plan`` with nothing pending after ``name`` (``migrate --to``)."""
    return replace(plan, pending=[m for m in plan.pending if m.name <= name])


@dataclass(frozen=True)
class StampChange:
    """What ``stamp`` changes in one schema's ledger, without running any migration:
    rows to ``record`` (with the file's checksum) or to ``delete``, planned from a
    ledger whose fingerprint was ``expected`` (None: the ledger does not exist yet)."""

    schema: str
    namespace: Namespace
    record: tuple[Migration, ...]
    delete: tuple[str, ...]
    expected: str | None


def stamp_change(
    schema: str,
    namespace: Namespace,
    migrations: Sequence[Migration],
    ledger: Sequence[LedgerRow] | None,
    name: str,
    *,
    delete: bool,
) -> tuple[StampChange, list[str]]:
    """Stamp up to and including ``name`` (record what is not recorded) or, with
    ``delete``, remove the records of ``name`` and everything after it; the problems
    are the rows in that range whose file was edited after they were applied."""
    files = {m.name: m for m in migrations}
    rows = list(ledger or [])
    applied = {r.name: r.checksum for r in rows}
    touched = [n for n in applied if (n >= name if delete else n <= name)]
    problems = [
        f"{schema}: migration {n} was edited after it was applied (checksum "
        f"{files[n].checksum[:12]}, recorded {str(applied[n])[:12]})"
        for n in sorted(touched)
        if n in files and applied[n] and applied[n] != files[n].checksum
    ]
    record = tuple(m for m in migrations if m.name <= name and m.name not in applied)
    record = () if delete else record
    removed = tuple(sorted(touched)) if delete else ()
    expected = None if ledger is None else fingerprint((r.name, r.checksum) for r in rows)
    return StampChange(schema, namespace, record, removed, expected), problems
