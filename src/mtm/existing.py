"""Registering schemas another tool made (``mtm create --existing``), pure: which
schemas, with which domains, and the one transaction that registers each.

The schema and its tables are left as they are. The transaction takes the schema's
lock (``steps.frame``), checks again that the schema exists and has no ledger yet,
adds the registry row and the domains, creates the ledger, records the baseline's
migrations as applied (with their files' checksums, never run) and writes the state
row: a schema is registered whole or not at all.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import steps
from .config import Config
from .errors import InvalidName, UsageError
from .identifiers import do_block, quote_literal, validate_domain, validate_schema_name
from .ledger import insert_sql, ledger_ddl
from .listfile import numbered_lines
from .migrations import Migration
from .registry import domains_insert_sql, tenant_ref

# Raised under the lock when the schema is gone, or has a ledger, by then.
SCHEMA_MISSING = "MTM05"
ALREADY_LEDGER = "MTM06"


@dataclass(frozen=True)
class ExistingSchema:
    """One schema to register: its name, domains (the first is primary) and name."""

    schema: str
    domains: tuple[str, ...] = ()
    name: str | None = None


@dataclass
class RegisterResult:
    """What ``create --existing`` did: the schemas registered, those that failed (with
    the reason), those skipped as already registered, and the migrations recorded."""

    baseline: str | None
    recorded: list[str]
    registered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def read_schema_file(path: str | Path) -> list[ExistingSchema]:
    """One schema per line, optionally followed by its domains (separated by spaces);
    blank lines and ``#`` comments are ignored. Every name is checked here."""
    out: list[ExistingSchema] = []
    for number, words in numbered_lines(path, "--from-file"):
        try:
            schema = validate_schema_name(words[0])
            domains = tuple(validate_domain(d) for d in words[1:])
        except InvalidName as exc:
            raise InvalidName(f"{path}, line {number}: {exc.message}") from None
        out.append(ExistingSchema(schema, domains))
    if not out:
        raise UsageError(f"--from-file {path} names no schema")
    return out


def matching(pattern: str, schemas: Iterable[str], registered: set[str]) -> list[str]:
    """The schemas ``pattern`` (a shell glob) matches that are not registered and are
    not PostgreSQL's own; a match mtm cannot take as a tenant is refused by name."""
    out: list[str] = []
    for schema in sorted(schemas):
        if schema in registered or not fnmatch.fnmatchcase(schema, pattern):
            continue
        if schema.startswith("pg_") or schema in ("information_schema", "public"):
            continue
        try:
            validate_schema_name(schema)
        except InvalidName as exc:
            raise InvalidName(
                f"--match {pattern!r} matches a schema mtm cannot register: {exc.message}; "
                "narrow the pattern (nothing was changed)"
            ) from None
        out.append(schema)
    return out


def refuse_duplicates(items: Sequence[ExistingSchema]) -> None:
    """A schema or a domain named twice is a mistake in the list: refused."""
    seen: set[str] = set()
    hosts: dict[str, str] = {}
    for item in items:
        if item.schema in seen:
            raise UsageError(f"schema {item.schema!r} is named twice (nothing was changed)")
        seen.add(item.schema)
        for d in item.domains:
            if d in hosts:
                raise UsageError(
                    f"domain {d!r} is given to both {hosts[d]!r} and {item.schema!r} "
                    "(nothing was changed)"
                )
            hosts[d] = item.schema


def register_sql(
    config: Config,
    item: ExistingSchema,
    record: Sequence[Migration],
) -> list[str]:
    """The one transaction that registers ``item``'s schema and records ``record``."""
    schema, lit = item.schema, quote_literal
    checks = do_block(
        f"BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {lit(schema)}) "
        f"THEN RAISE EXCEPTION {lit(f'schema {schema} does not exist')} "
        f"USING ERRCODE = '{SCHEMA_MISSING}'; END IF; "
        "IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = {lit(schema)} AND c.relname = {lit(config.migrations_table)}) "
        f"THEN RAISE EXCEPTION {lit(f'schema {schema} already has a ledger table')} "
        f"USING ERRCODE = '{ALREADY_LEDGER}'; END IF; END"
    )
    name = lit(item.name) if item.name is not None else "NULL"
    before = [
        checks,
        f"INSERT INTO {tenant_ref(config)} (schema_name, name) VALUES ({lit(schema)}, {name})",
    ]
    if item.domains:
        before.append(domains_insert_sql(config, schema, list(item.domains)))
    before.append(ledger_ddl(config, schema))
    before += [insert_sql(config, schema, m) for m in record]
    return steps.frame(config, schema, "tenant", before=before).around([])


def up_to(migrations: Sequence[Migration], baseline: str | None) -> list[Migration]:
    """The migrations a baseline records: up to and including it (``head``: all);
    none without one. An unknown name is refused."""
    if baseline is None:
        return []
    if baseline == "head":
        return list(migrations)
    if not any(m.name == baseline for m in migrations):
        raise UsageError(
            f"--baseline {baseline}: there is no tenant migration {baseline!r} (names are "
            "file names without the extension; 'head' is the newest)"
        )
    return [m for m in migrations if m.name <= baseline]
