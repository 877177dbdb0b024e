"""Pure rules over parsed migrations: what will hurt when it runs on thousands of schemas.

Each statement is read with PostgreSQL's grammar (``sqlscript``; Python migrations
through their offline rendering, ``render``). The migrations of a namespace are walked
in order, so that a rule can know what earlier ones did: which tables a migration
creates itself (an index on a table made in the same migration locks nothing anyone
waits for), the column types ``CREATE TABLE`` and ``ADD COLUMN`` declared (to tell a
type change that rewrites from one that does not), and which ``CHECK (c IS NOT NULL)
NOT VALID`` constraints exist. What the files do not say (a column's type set outside
migrations, a function's volatility) is judged conservatively, and the message says so.

A migration silences rules with a comment anywhere in its file:
``-- mtm-lint: disable=rule[,rule]`` in SQL, ``# mtm-lint: disable=rule`` in Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import MigrationFileError
from .sqlfacts import VOLATILE, base_type, functions, no_rewrite, show_type
from .sqlscript import Savepoints, Statement


@dataclass(frozen=True)
class Rule:
    """One rule: its id, what goes wrong in one line, and what to write instead.
    ``citus``: a rule of tenant migrations on a Citus cluster (distributed schemas)."""

    id: str
    explanation: str
    alternative: str
    citus: bool = False


RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule(
            "index-not-concurrent",
            "CREATE INDEX on an existing table blocks every write to it until the index is built",
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS in a migration of its own marked "
            "'-- mtm:no-transaction' (transactional = False in Python)",
        ),
        Rule(
            "column-type-rewrite",
            "ALTER COLUMN ... TYPE rewrites the table (and its indexes) under an ACCESS "
            "EXCLUSIVE lock, unless the change is one PostgreSQL knows needs no rewrite",
            "add a new column, fill it in batches, then switch to it; only varchar/varbit "
            "widening, dropping a length, varchar<->text and widening numeric precision "
            "are known not to rewrite",
        ),
        Rule(
            "volatile-default",
            "ADD COLUMN with a volatile default (or serial, identity, stored generated) "
            "rewrites the whole table under an ACCESS EXCLUSIVE lock",
            "add the column without that default, SET DEFAULT in a later statement, and "
            "fill the existing rows in batches",
        ),
        Rule(
            "not-null-without-check",
            "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock",
            "first ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID, then VALIDATE "
            "CONSTRAINT, then SET NOT NULL (PostgreSQL uses the valid check and skips the "
            "scan), then drop the check",
        ),
        Rule(
            "foreign-key-validated",
            "a new FOREIGN KEY on an existing table checks every row while it locks "
            "writes on both tables",
            "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a "
            "later migration (it takes a lighter lock)",
        ),
        Rule(
            "drop-column-referenced",
            "DROP COLUMN of a column the models still have: the running application "
            "reads it and fails as soon as it is gone",
            "remove the column from the models and deploy that first, drop it in a later release",
        ),
        Rule(
            "transaction-control",
            "BEGIN, COMMIT or ROLLBACK in a migration cuts mtm's transaction in two: the "
            "ledger row and the migration no longer commit together",
            "remove it; a statement that cannot run in a transaction goes in a migration "
            "marked no-transaction, which runs statement by statement",
        ),
        Rule(
            "citus-trigger",
            "CREATE TRIGGER on a tenant table: Citus refuses triggers on the tables of a "
            "distributed schema (and citus_schema_distribute refuses a schema with one)",
            "do the trigger's work in the statement (a DEFAULT, a generated column, a "
            "CHECK) or in the application",
            citus=True,
        ),
        Rule(
            "citus-alter-constraint",
            "ALTER TABLE ... ALTER CONSTRAINT: Citus refuses it on a distributed table",
            "drop the constraint and add it again as it should be (NOT VALID, then "
            "VALIDATE CONSTRAINT in a later migration)",
            citus=True,
        ),
        Rule(
            "citus-volatile-modify",
            "a VOLATILE function (random(), clock_timestamp(), gen_random_uuid() ...) in "
            "an UPDATE or DELETE: Citus refuses it on a distributed table",
            "compute the value in a statement of its own (or in the application) and "
            "write it as a constant",
            citus=True,
        ),
        Rule(
            "citus-set-schema",
            "ALTER TABLE ... SET SCHEMA moves a table out of the tenant's distributed "
            "schema: Citus refuses it for a table with foreign keys, and takes any other "
            "out of the cluster (undistributes it)",
            "create the table where it belongs and copy its rows in the same migration",
            citus=True,
        ),
        Rule(
            "not-rendered",
            "part of this Python migration could not be rendered as SQL (it needs the "
            "database's answers), so lint cannot see what it does there",
            "review that part by hand, then silence this rule for the migration",
        ),
    )
}


@dataclass(frozen=True)
class Subject:
    """One migration as lint sees it. ``lines`` is false for rendered Python (its
    statements have no line in the file); ``unrendered`` says where rendering stopped."""

    namespace: str
    name: str
    path: str
    statements: Sequence[Statement]
    disabled: frozenset[str] = frozenset()
    lines: bool = True
    unrendered: str | None = None


@dataclass(frozen=True)
class Finding:
    """A rule broken by one statement of one migration."""

    rule: str
    namespace: str
    migration: str
    path: str
    line: int | None
    statement: str
    detail: str = ""

    @property
    def message(self) -> str:
        rule = RULES[self.rule]
        detail = f" ({self.detail})" if self.detail else ""
        return f"{rule.explanation}{detail}; instead: {rule.alternative}"


# Rule ids separated by commas; prose after them (a reason) is not read.
_IDS = r"([\w-]+(?:\s*,\s*[\w-]+)*)"
_DISABLE = {
    "sql": re.compile(r"--\s*mtm-lint:\s*disable\s*=\s*" + _IDS, re.IGNORECASE),
    "python": re.compile(r"#\s*mtm-lint:\s*disable\s*=\s*" + _IDS, re.IGNORECASE),
}


def disabled_rules(text: str, kind: str, path: str) -> frozenset[str]:
    """The rules a migration's file silences; an unknown rule name is refused, so a
    typo cannot silence nothing quietly."""
    found: set[str] = set()
    for match in _DISABLE["python" if kind == "python" else "sql"].finditer(text):
        for name in match[1].split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in RULES:
                raise MigrationFileError(
                    f"{path}: 'mtm-lint: disable={name}' names no rule (the rules: "
                    f"{', '.join(RULES)})"
                )
            found.add(name)
    return frozenset(found)


Table = tuple[str, str]  # (schema as written or "", name)


@dataclass
class _History:
    """What earlier migrations of a namespace (and earlier statements) declared."""

    namespace: str
    types: dict[tuple[Table, str], Mapping[str, Any]] = field(default_factory=dict)
    checked: set[tuple[Table, str]] = field(default_factory=set)

    def table(self, relation: Mapping[str, Any]) -> Table:
        schema = relation.get("schemaname", "")
        if self.namespace == "public" and schema == "public":
            schema = ""  # a public migration's unqualified names are public's
        return schema, relation.get("relname", "")


def lint(
    subjects: Sequence[Subject],
    selected: set[tuple[str, str]] | None = None,
    referenced: set[tuple[str, str, str]] | None = None,
    *,
    citus: bool = False,
) -> list[Finding]:
    """Findings of the ``selected`` (namespace, name) migrations (all if None).

    ``subjects`` are every migration in run order, so that earlier ones inform later
    ones; ``referenced`` holds (namespace, table, column) of the models, when known;
    ``citus``: the tenants are distributed schemas, and the Citus rules apply to them.
    """
    histories: dict[str, _History] = {}
    out: list[Finding] = []
    for subject in subjects:
        history = histories.setdefault(subject.namespace, _History(subject.namespace))
        findings = list(_check(subject, history, referenced))
        if citus and subject.namespace == "tenant":
            findings += _check_citus(subject)
        if selected is not None and (subject.namespace, subject.name) not in selected:
            continue
        out += [f for f in findings if f.rule not in subject.disabled]
    return out


def _finding(subject: Subject, rule: str, statement: Statement | None, detail: str = "") -> Finding:
    line = statement.line if statement is not None and subject.lines else None
    text = str(statement) if statement is not None else ""
    return Finding(rule, subject.namespace, subject.name, subject.path, line, text, detail)


def _check_citus(subject: Subject) -> Iterator[Finding]:
    """What Citus refuses (or turns into something else) in a distributed schema."""
    for statement in subject.statements:
        node = statement.node
        if statement.kind == "CreateTrigStmt":
            yield _finding(subject, "citus-trigger", statement)
        elif statement.kind == "AlterTableStmt":
            for cmd in node.get("cmds", ()):
                if cmd.get("AlterTableCmd", {}).get("subtype") == "AT_AlterConstraint":
                    yield _finding(subject, "citus-alter-constraint", statement)
        elif statement.kind in ("UpdateStmt", "DeleteStmt"):
            parts = (node.get("targetList"), node.get("whereClause"))
            # A subquery's value Citus works out first, as a constant: that one passes.
            called = set().union(*(functions(p, subqueries=False) for p in parts))
            volatile = sorted(called & VOLATILE)
            if volatile:
                yield _finding(subject, "citus-volatile-modify", statement, f"{volatile[0]}()")
        elif statement.kind == "AlterObjectSchemaStmt" and node.get("objectType") == "OBJECT_TABLE":
            yield _finding(subject, "citus-set-schema", statement, f"to {node.get('newschema')}")


def _check(
    subject: Subject, history: _History, referenced: set[tuple[str, str, str]] | None
) -> Iterator[Finding]:
    def finding(rule: str, statement: Statement | None, detail: str = "") -> Finding:
        return _finding(subject, rule, statement, detail)

    created: set[Table] = set()
    savepoints = Savepoints()
    for statement in subject.statements:
        node = statement.node
        if statement.kind == "CreateStmt":
            table = history.table(node.get("relation", {}))
            created.add(table)
            for element in node.get("tableElts", ()):
                column = element.get("ColumnDef")
                if column is not None:
                    history.types[(table, column.get("colname", ""))] = column.get("typeName", {})
        elif statement.kind == "CreateTableAsStmt":
            created.add(history.table(node.get("into", {}).get("rel", {})))
        elif statement.kind == "IndexStmt":
            table = history.table(node.get("relation", {}))
            if not node.get("concurrent") and table not in created:
                yield finding("index-not-concurrent", statement)
        elif statement.kind == "AlterTableStmt":
            table = history.table(node.get("relation", {}))
            for cmd in node.get("cmds", ()):
                problem = _alter(cmd.get("AlterTableCmd", {}), table, table in created, history)
                if problem is not None:
                    yield finding(problem[0], statement, problem[1])
                dropped = _dropped_column(cmd.get("AlterTableCmd", {}))
                if dropped and referenced is not None:
                    key = _model_key(subject.namespace, table, dropped)
                    if key in referenced:
                        yield finding("drop-column-referenced", statement, f"{key[1]}.{dropped}")
        elif statement.kind == "TransactionStmt" and savepoints.ends_transaction(statement):
            yield finding("transaction-control", statement)
    if subject.unrendered is not None:
        yield finding("not-rendered", None, subject.unrendered)


def _alter(
    cmd: Mapping[str, Any], table: Table, new_table: bool, history: _History
) -> tuple[str, str] | None:
    """The rule one ALTER TABLE subcommand breaks, with a detail; track what it declares."""
    subtype, column = cmd.get("subtype", ""), cmd.get("name", "")
    definition = cmd.get("def", {})
    if subtype == "AT_AddColumn":
        coldef = definition.get("ColumnDef", {})
        history.types[(table, coldef.get("colname", ""))] = coldef.get("typeName", {})
        if new_table:
            return None
        return _added_column(coldef)
    if subtype == "AT_AlterColumnType":
        coldef = definition.get("ColumnDef", {})
        old = history.types.get((table, column))
        new = coldef.get("typeName", {})
        history.types[(table, column)] = new
        if new_table:
            return None
        if "raw_default" in coldef:
            return "column-type-rewrite", f"{column}: a USING expression always rewrites"
        if old is None:
            return "column-type-rewrite", (
                f"{column}: its current type is not declared in these migrations, so "
                "mtm cannot tell whether the change rewrites"
            )
        if not no_rewrite(old, new):
            return "column-type-rewrite", f"{column}: {show_type(old)} to {show_type(new)}"
        return None
    if subtype == "AT_AddConstraint":
        constraint = definition.get("Constraint", {})
        checked = _checked_column(constraint)
        if checked is not None:
            history.checked.add((table, checked))
        contype = constraint.get("contype")
        if new_table:
            return None
        if contype == "CONSTR_FOREIGN" and not constraint.get("skip_validation"):
            return "foreign-key-validated", ""
        if contype in _INDEXED and "indexname" not in constraint:
            return "index-not-concurrent", (
                "the constraint builds its index under lock: build it CONCURRENTLY first, "
                "then ADD CONSTRAINT ... USING INDEX"
            )
        return None
    if subtype == "AT_SetNotNull":
        if new_table or (table, column) in history.checked:
            return None
        return "not-null-without-check", column
    if subtype == "AT_DropColumn":
        history.types.pop((table, column), None)
    return None


# Constraints that build an index when added (unless given one: USING INDEX).
_INDEXED = {"CONSTR_UNIQUE", "CONSTR_PRIMARY", "CONSTR_EXCLUSION"}
_SERIAL = {"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"}


def _added_column(coldef: Mapping[str, Any]) -> tuple[str, str] | None:
    name = coldef.get("colname", "")
    kind = base_type(coldef.get("typeName", {}))
    if kind in _SERIAL:
        return "volatile-default", f"{name} {kind}"
    for constraint in coldef.get("constraints", ()):
        c = constraint.get("Constraint", {})
        contype = c.get("contype")
        if contype == "CONSTR_DEFAULT":
            volatile = sorted(functions(c.get("raw_expr")) & VOLATILE)
            if volatile:
                return "volatile-default", f"{name} DEFAULT {volatile[0]}()"
        elif contype == "CONSTR_IDENTITY":
            return "volatile-default", f"{name} GENERATED ... AS IDENTITY"
        elif contype == "CONSTR_GENERATED" and c.get("generated_when") != "v":
            return "volatile-default", f"{name} GENERATED ... STORED"
        elif contype == "CONSTR_FOREIGN" and not c.get("skip_validation"):
            return "foreign-key-validated", f"{name} REFERENCES"
    return None


def _checked_column(constraint: Mapping[str, Any]) -> str | None:
    """The column of ``CHECK (col IS NOT NULL) NOT VALID`` (or PostgreSQL 18's ``NOT
    NULL col NOT VALID``), if that is what ``constraint`` is."""
    if not constraint.get("skip_validation"):
        return None
    if constraint.get("contype") == "CONSTR_NOTNULL":
        keys = constraint.get("keys", ())
        return str(keys[0].get("String", {}).get("sval")) if len(keys) == 1 else None
    test = constraint.get("raw_expr", {}).get("NullTest", {})
    if constraint.get("contype") != "CONSTR_CHECK" or test.get("nulltesttype") != "IS_NOT_NULL":
        return None
    fields = test.get("arg", {}).get("ColumnRef", {}).get("fields", ())
    return str(fields[-1].get("String", {}).get("sval")) if fields else None


def _dropped_column(cmd: Mapping[str, Any]) -> str | None:
    return str(cmd.get("name")) if cmd.get("subtype") == "AT_DropColumn" else None


def _model_key(namespace: str, table: Table, column: str) -> tuple[str, str, str]:
    schema, name = table
    if schema == "public" or (namespace == "public" and not schema):
        return "public", name, column
    return ("tenant" if not schema else schema), name, column
