"""A schema's structure as values: its objects, and what differs between two schemas.

Pure: no connection, no SQL. ``catalog`` reads these facts from ``pg_catalog``
(``describe``) and hashes them there (``fingerprints``); a ``SchemaCatalog`` computes
the same hash in Python (``pghash``), and ``compare`` names what is missing, extra or different
between two of them, attribute by attribute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .pghash import hash_extended

# The detail fields of each kind, in the order ``catalog``'s SQL yields them.
FIELDS: dict[str, tuple[str, ...]] = {
    "relation": (
        "relkind",
        "persistence",
        "row_security",
        "partition_key",
        "inherits",
        "definition",
    ),
    "column": ("position", "type", "not_null", "default", "identity", "generated", "collation"),
    "constraint": (
        "type",
        "columns",
        "references",
        "referenced_columns",
        "on_update",
        "on_delete",
        "match",
        "deferrable",
        "deferred",
        "validated",
        "expression",
        "depends_on",
    ),
    "index": (
        "method",
        "unique",
        "primary",
        "columns",
        "key_columns",
        "options",
        "operator_classes",
        "expressions",
        "predicate",
        "valid",
        "depends_on",
    ),
    "sequence": (
        "type",
        "start",
        "increment",
        "min",
        "max",
        "cache",
        "cycle",
        "owned_by",
    ),
    "function": (
        "kind",
        "result",
        "language",
        "volatility",
        "strict",
        "security_definer",
        "parallel",
        "settings",
        "argument_defaults",
        "body_md5",
    ),
    "trigger": ("type", "function", "arguments", "columns", "when", "enabled", "depends_on"),
    "policy": ("command", "permissive", "using", "with_check", "depends_on"),
    "enum": ("labels",),
    "domain": ("base_type", "not_null", "default"),
}


# A schema's fingerprint: MD5 of its number of lines and, for each seed, the sum of the
# lines' 64-bit ``hashtextextended``. A sum needs no sort of the lines (the SQL
# computes it for thousands of schemas at once) and, unlike XOR, does not let two
# equal lines cancel out; two seeds make 128 bits.
SEEDS = (0, 1)


def line_hashes(lines: Sequence[str], seed: int) -> list[int]:
    return [hash_extended(line.encode("utf-8"), seed) for line in lines]


def combine(count: int, *sums: int) -> str:
    """The fingerprint of ``count`` lines whose hashes summed to ``sums`` (one per seed),
    as the SQL writes it: MD5 of the numbers in decimal, space-separated."""
    text = " ".join(str(n) for n in (count, *sums))
    return hashlib.md5(text.encode("ascii"), usedforsecurity=False).hexdigest()


def _line(kind: str, parent: str, name: str, detail: Sequence[str | None]) -> str:
    values = "\t".join("\\N" if v is None else v for v in detail)
    return f"{kind}\t{parent}\t{name}\t{values}"


@dataclass(frozen=True, order=True)
class CatalogObject:
    """One object of a schema: its kind, the table it belongs to ('' if none), its name."""

    kind: str
    parent: str
    name: str
    detail: tuple[str | None, ...] = field(compare=True)

    @property
    def attributes(self) -> dict[str, str | None]:
        return dict(zip(FIELDS[self.kind], self.detail, strict=True))

    @property
    def label(self) -> str:
        return f"{self.kind} {self.parent + '.' if self.parent else ''}{self.name}"


ObjectKey = tuple[str, str, str]


@dataclass(frozen=True)
class SchemaCatalog:
    """The schema-neutral structure of one schema; equal catalogs mean equal structures."""

    schema: str
    objects: Mapping[ObjectKey, CatalogObject]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SchemaCatalog):
            return NotImplemented
        return dict(self.objects) == dict(other.objects)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    @property
    def fingerprint(self) -> str:
        """The fingerprint ``fingerprints`` computes in SQL for the same schema."""
        lines = [_line(o.kind, o.parent, o.name, o.detail) for o in self.objects.values()]
        return combine(len(lines), *(sum(line_hashes(lines, seed)) for seed in SEEDS))

    def of_kind(self, kind: str) -> list[CatalogObject]:
        return sorted(o for o in self.objects.values() if o.kind == kind)


@dataclass(frozen=True)
class Difference:
    """One way in which ``b`` differs from the reference ``a``.

    ``change`` is ``missing`` (in a, not in b), ``extra`` (in b, not in a) or
    ``different`` (then ``attribute`` names what differs, with both values).
    """

    kind: str
    parent: str
    name: str
    change: str
    attribute: str | None = None
    expected: str | None = None
    actual: str | None = None

    def __str__(self) -> str:
        where = f"{self.kind} {self.parent + '.' if self.parent else ''}{self.name}"
        if self.change != "different":
            return f"{where}: {self.change}"
        return f"{where}: {self.attribute} is {self.actual!r}, expected {self.expected!r}"


def compare(a: SchemaCatalog, b: SchemaCatalog) -> list[Difference]:
    """What is missing from, extra in, or different in ``b`` compared with ``a``.

    Pure; sorted by kind, table and name. Empty when the structures are equal.
    """
    out: list[Difference] = []
    for key in sorted(a.objects.keys() | b.objects.keys()):
        kind, parent, name = key
        left, right = a.objects.get(key), b.objects.get(key)
        if right is None:
            out.append(Difference(kind, parent, name, "missing"))
        elif left is None:
            out.append(Difference(kind, parent, name, "extra"))
        elif left.detail != right.detail:
            expected, actual = left.attributes, right.attributes
            for attribute in FIELDS[kind]:
                if expected[attribute] != actual[attribute]:
                    out.append(
                        Difference(
                            kind,
                            parent,
                            name,
                            "different",
                            attribute,
                            expected[attribute],
                            actual[attribute],
                        )
                    )
    return out
