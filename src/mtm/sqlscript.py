"""SQL scripts read with PostgreSQL's own grammar (pglast wraps the server's parser).

A migration's statements must be seen exactly as the server will see them: a text
splitter that guesses differently (a column named ``begin``, a string ending in a
backslash) can hide a ``COMMIT`` that ends mtm's transaction halfway through a step.
This module splits a script into statements, keeping each one's source text and line,
and says which statements control the transaction, which cannot run inside one, and
which need a COPY data stream mtm cannot provide. It parses with
``standard_conforming_strings`` on, as mtm sets it for every transactional step.
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast, enums, parser

_BOM = "\ufeff"


class ScriptSyntaxError(ValueError):
    """The script does not parse; ``line`` is 1-based (the last line if at the end)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Statement:
    """One statement: its exact source text (no leading comment, no ``;``) and line."""

    text: str
    line: int
    node: ast.Node

    def __str__(self) -> str:
        """The start of the statement on one line, to name it in a message."""
        short = " ".join(self.text.split())
        return short if len(short) <= 60 else short[:57] + "..."


def strip_bom(sql: str) -> str:
    """A UTF-8 byte order mark is not SQL; editors on Windows write one."""
    return sql[1:] if sql.startswith(_BOM) else sql


def split(sql: str) -> list[Statement]:
    """The statements of ``sql`` in order; comments and empty statements are dropped."""
    sql = strip_bom(sql)
    try:
        raws = parser.parse_sql(sql)
    except parser.ParseError as exc:
        message, index = exc.args[0], exc.args[1] if len(exc.args) > 1 else None
        at = len(sql) if index is None else index
        raise ScriptSyntaxError(sql.count("\n", 0, at) + 1, str(message)) from None
    out = []
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(sql)
        if raw.stmt is None:
            continue
        text = sql[start:end].rstrip()
        out.append(Statement(text, sql.count("\n", 0, start) + 1, raw.stmt))
    return out


_CONTROL = {
    enums.TransactionStmtKind.TRANS_STMT_BEGIN,
    enums.TransactionStmtKind.TRANS_STMT_START,
    enums.TransactionStmtKind.TRANS_STMT_COMMIT,
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK,
    enums.TransactionStmtKind.TRANS_STMT_PREPARE,
    enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED,
}


class Savepoints:
    """The savepoints a script (or one Python migration) made, in order.

    A savepoint made and released or rolled back to by the same script cannot end or
    undo anything outside it, so it is allowed inside mtm's transaction. ``RELEASE`` or
    ``ROLLBACK TO`` a savepoint the script did not make would reach into what ran before
    it (another migration of the same create, the ledger row): that is refused.
    """

    def __init__(self) -> None:
        self._names: list[str] = []

    def ends_transaction(self, node: ast.Node) -> bool:
        """Whether ``node`` leaves the enclosing transaction; track savepoints it makes."""
        if not isinstance(node, ast.TransactionStmt):
            return False
        kind = node.kind
        if kind in _CONTROL:
            return True
        name = node.savepoint_name or ""
        if kind == enums.TransactionStmtKind.TRANS_STMT_SAVEPOINT:
            self._names.append(name)
            return False
        if name not in self._names:
            return True  # RELEASE / ROLLBACK TO a savepoint made before this script
        last = len(self._names) - 1 - self._names[::-1].index(name)
        keep = last if kind == enums.TransactionStmtKind.TRANS_STMT_RELEASE else last + 1
        del self._names[keep:]
        return False


def transaction_control(statements: list[Statement]) -> Statement | None:
    """The first statement that begins, ends or prepares a transaction, if any.

    ``DO`` blocks and routine bodies are not looked into: PostgreSQL itself refuses a
    ``COMMIT`` or ``ROLLBACK`` in them while a transaction block is open.
    """
    savepoints = Savepoints()
    for statement in statements:
        if savepoints.ends_transaction(statement.node):
            return statement
    return None


_REINDEX_MANY = {
    enums.ReindexObjectType.REINDEX_OBJECT_SCHEMA,
    enums.ReindexObjectType.REINDEX_OBJECT_SYSTEM,
    enums.ReindexObjectType.REINDEX_OBJECT_DATABASE,
}


def needs_no_transaction(node: ast.Node) -> bool:
    """Whether PostgreSQL refuses to run ``node`` inside a transaction block."""
    if isinstance(node, ast.VacuumStmt):
        return bool(node.is_vacuumcmd)  # a lone ANALYZE may run in a transaction
    if isinstance(node, ast.IndexStmt | ast.DropStmt):
        return bool(node.concurrent)
    if isinstance(node, ast.ReindexStmt):
        return node.kind in _REINDEX_MANY or _has_option(node.params, "concurrently")
    if isinstance(node, ast.ClusterStmt):
        return node.relation is None  # CLUSTER of every table
    if isinstance(node, ast.DiscardStmt):
        return node.target == enums.DiscardMode.DISCARD_ALL
    if isinstance(node, ast.AlterDatabaseStmt):
        return _has_option(node.options, "tablespace")
    if isinstance(node, ast.AlterTableStmt):
        return any(
            isinstance(cmd, ast.AlterTableCmd)
            and isinstance(cmd.def_, ast.PartitionCmd)
            and bool(cmd.def_.concurrent)
            for cmd in node.cmds or ()
        )
    if isinstance(node, ast.CreateSubscriptionStmt):
        return not any(
            isinstance(opt, ast.DefElem)
            and opt.defname in ("create_slot", "connect")
            and _is_false(opt.arg)
            for opt in node.options or ()
        )
    return isinstance(
        node,
        ast.CreatedbStmt
        | ast.DropdbStmt
        | ast.CreateTableSpaceStmt
        | ast.DropTableSpaceStmt
        | ast.AlterSystemStmt,
    )


def client_copy(node: ast.Node) -> bool:
    """``COPY ... FROM STDIN`` / ``TO STDOUT``: they need a data stream mtm cannot feed."""
    return isinstance(node, ast.CopyStmt) and not node.filename and not node.is_program


def _has_option(options: tuple[ast.Node, ...] | None, name: str) -> bool:
    return any(isinstance(o, ast.DefElem) and o.defname == name for o in options or ())


def _is_false(arg: object) -> bool:
    if isinstance(arg, ast.Boolean):
        return not arg.boolval
    if isinstance(arg, ast.String):
        return (arg.sval or "").lower() in ("false", "off", "no", "0")
    if isinstance(arg, ast.Integer):
        return arg.ival == 0
    return False
