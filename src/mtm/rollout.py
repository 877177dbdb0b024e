"""Staged rollouts: which tenants a run covers, and which of them go first.

``--tenant``, ``--tenant-file`` and ``--match`` narrow a run to the tenants that all of
the given ones name (they intersect). ``--canary`` then takes, among the selected
tenants with pending work, the first N (or P%, rounded up) by ``md5(schema)``: an order
that owes nothing to names' alphabet or to when tenants were created (so the canaries
are not always the oldest customers), and that is the same from one run to the next (so
a dry run shows the canaries the real run will take). ``ahead`` is the other side of a
rollout: which tenants ``status`` shows at a later step than most.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from pathlib import Path

from .config import Config
from .errors import InvalidName, TenantError, UsageError
from .identifiers import validate_schema_name
from .listfile import numbered_lines
from .plan import SchemaPlan
from .registry import registered_among, tenant_schemas
from .results import FleetOutcome, SchemaStatus
from .sqlrun import Conn
from .words import plural

SHOWN = 5  # names shown in a refusal before "and N more"


@dataclass(frozen=True)
class Selection:
    """What narrows a run to some tenants; None where that way was not used."""

    tenants: tuple[str, ...] | None = None  # --tenant
    listed: tuple[str, ...] | None = None  # the names of --tenant-file
    listed_from: str = "--tenant-file"  # how messages name where ``listed`` came from
    match: str | None = None  # --match: a shell glob on the schema name

    @property
    def narrowed(self) -> bool:
        return self.tenants is not None or self.listed is not None or self.match is not None


def read_tenant_file(path: str | Path) -> tuple[str, ...]:
    """The schema names of a tenant file, one a line, in file order without repeats:
    blank lines and ``#`` comments are skipped; ``-`` reads standard input."""
    names: list[str] = []
    for number, words in numbered_lines(path, "--tenant-file"):
        name = " ".join(words)
        try:
            names.append(validate_schema_name(name))
        except InvalidName as exc:
            raise InvalidName(f"--tenant-file {path}, line {number}: {exc.message}") from None
    return tuple(dict.fromkeys(names))


def resolve(conn: Conn, config: Config, registry: bool, selection: Selection) -> list[str] | None:
    """The selected tenants' schemas in name order, or None when nothing narrows the run.

    Every name given by ``--tenant`` or the file must be a registered tenant, and the
    selection must not be empty: both are refused (exit 2) before anything runs.
    """
    if not selection.narrowed:
        return None
    named = [*(selection.tenants or ()), *(selection.listed or ())]
    if not registry:
        known: set[str] = set()
        everyone: list[str] = []
    elif selection.match is not None:
        everyone = tenant_schemas(conn, config)
        known = set(everyone)
    else:
        everyone = []
        known = registered_among(conn, config, named) if named else set()
    for names, source in (
        (selection.tenants, "--tenant"),
        (selection.listed, selection.listed_from),
    ):
        missing = [n for n in names or () if n not in known]
        if missing:
            raise TenantError(unknown_names(missing, source))
    chosen: set[str] | None = None
    for names in (selection.tenants, selection.listed):
        if names is not None:
            chosen = set(names) if chosen is None else chosen & set(names)
    if selection.match is not None:
        matching = {s for s in everyone if fnmatchcase(s, selection.match)}
        chosen = matching if chosen is None else chosen & matching
    if not chosen:
        raise UsageError(f"no tenant is selected by {_given(selection)}; nothing was run")
    return sorted(chosen)


def unknown_names(missing: Sequence[str], source: str) -> str:
    """One line naming the first few names that are not registered tenants."""
    if len(missing) == 1:
        return f"no tenant {missing[0]!r} is registered ({source}); nothing was run"
    shown = ", ".join(repr(n) for n in missing[:SHOWN])
    more = f" and {len(missing) - SHOWN:,} more" if len(missing) > SHOWN else ""
    return (
        f"{len(missing):,} names in {source} are not registered tenants: {shown}{more}; "
        "nothing was run (see 'mtm tenants')"
    )


def _given(selection: Selection) -> str:
    parts = []
    if selection.tenants is not None:
        parts.append("--tenant " + ", ".join(selection.tenants))
    if selection.listed is not None:
        parts.append(f"{selection.listed_from} ({plural(len(selection.listed), 'name')})")
    if selection.match is not None:
        parts.append(f"--match {selection.match!r}")
    return " together with ".join(parts)


@dataclass(frozen=True)
class Canary:
    """How many tenants with pending work go first: a count, or a percentage."""

    count: int | None = None
    percent: Decimal | None = None

    def of(self, pending: int) -> int:
        """How many of ``pending`` tenants are canaries (a percentage rounded up, at
        least 1 when any is pending)."""
        if pending == 0:
            return 0
        if self.count is not None:
            return min(self.count, pending)
        assert self.percent is not None
        return min(pending, max(1, math.ceil(Decimal(pending) * self.percent / 100)))

    def __str__(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent}%"


def parse_canary(value: int | str | None) -> Canary | None:
    """``5`` or ``"5"`` (a count, at least 1) or ``"10%"`` (a percentage, above 0 and at
    most 100)."""
    if value is None:
        return None
    wrong = UsageError(
        f"--canary takes a count of tenants (e.g. 5) or a percentage (e.g. 10%), not {value!r}"
    )
    text = str(value).strip()
    if isinstance(value, bool):
        raise wrong
    if text.endswith("%"):
        try:
            percent = Decimal(text[:-1])
        except InvalidOperation:
            raise wrong from None
        if not percent.is_finite() or not 0 < percent <= 100:
            raise UsageError(f"--canary {text}: a percentage must be above 0% and at most 100%")
        return Canary(percent=percent)
    if not text.isdigit():
        raise wrong
    if int(text) < 1:
        raise UsageError("--canary must be at least 1 tenant")
    return Canary(count=int(text))


def md5_order(schemas: Sequence[str]) -> list[str]:
    """``schemas`` ordered by ``md5(schema)`` (the same order as PostgreSQL's
    ``ORDER BY md5(schema_name)``), names breaking ties."""
    return sorted(schemas, key=lambda s: (hashlib.md5(s.encode("utf-8")).hexdigest(), s))


def split(plans: Sequence[SchemaPlan], canary: Canary) -> tuple[list[SchemaPlan], list[SchemaPlan]]:
    """The canaries (in md5 order) and the rest (in their own order) of ``plans``."""
    chosen = set(md5_order([p.schema for p in plans])[: canary.of(len(plans))])
    by_schema = {p.schema: p for p in plans}
    canaries = [by_schema[s] for s in md5_order(list(chosen))]
    return canaries, [p for p in plans if p.schema not in chosen]


def combine(first: FleetOutcome, then: FleetOutcome) -> FleetOutcome:
    """The outcome of two stages of one run, as one."""
    return FleetOutcome(
        schemas=first.schemas + then.schemas,
        steps=first.steps + then.steps,
        failures=[*first.failures, *then.failures],
        not_started=first.not_started + then.not_started,
        interrupted=first.interrupted or then.interrupted,
        connection_errors=[*first.connection_errors, *then.connection_errors],
        dropped=[*first.dropped, *then.dropped],
    )


@dataclass(frozen=True)
class Ahead:
    """Tenants at a later step than most: where most are (``bulk``, the newest migration
    they applied, None for none) and how many are there, and each later position with its
    count, oldest first."""

    bulk: str | None
    bulk_count: int
    positions: tuple[tuple[str, int], ...]
    schemas: frozenset[str]


def ahead(tenants: Sequence[tuple[SchemaStatus, int]]) -> Ahead | None:
    """Which tenants are ahead of the rest, or None when none is: ``tenants`` are
    statuses with how many tenants each stands for (``StatusResult.positions``). Most
    tenants' newest applied migration is the rest's position (on a tie, the oldest
    such); tenants whose ledgers disagree with the files are left out."""
    clean = [(t, n) for t, n in tenants if not t.problems]
    counts: Counter[str | None] = Counter()
    for t, n in clean:
        counts[t.last_applied] += n
    if len(counts) < 2:
        return None
    bulk, bulk_count = min(counts.items(), key=lambda kv: (-kv[1], _position(kv[0])))
    later: Mapping[str | None, int] = {
        p: n for p, n in counts.items() if _position(p) > _position(bulk)
    }
    if not later:
        return None
    positions = tuple((p, n) for p, n in sorted(later.items(), key=lambda kv: _position(kv[0])))
    schemas = frozenset(t.schema for t, _ in clean if t.last_applied in later and t.schema)
    return Ahead(bulk, bulk_count, tuple((p or "", n) for p, n in positions), schemas)


def _position(last_applied: str | None) -> tuple[int, str]:
    return (0, "") if last_applied is None else (1, last_applied)
