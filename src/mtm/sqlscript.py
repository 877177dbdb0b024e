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

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_BOM = "\ufeff"


class ScriptSyntaxError(ValueError):
    """The script does not parse; ``line`` is 1-based (the last line if at the end)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Statement:
    """One statement: its exact source text (no leading comment, no ``;``), its line, and
    its parse node: the node's type (``"TransactionStmt"``) and fields, as PostgreSQL's
    parser gives them (a field that is false, zero or empty is absent)."""

    text: str
    line: int
    kind: str
    node: Mapping[str, Any]

    def __str__(self) -> str:
        """The start of the statement on one line, to name it in a message."""
        short = " ".join(self.text.split())
        return short if len(short) <= 60 else short[:57] + "..."


def strip_bom(sql: str) -> str:
    """A UTF-8 byte order mark is not SQL; editors on Windows write one."""
    return sql[1:] if sql.startswith(_BOM) else sql


def split(sql: str) -> list[Statement]:
    """The statements of ``sql`` in order; comments and empty statements are dropped."""
    # Imported on first use: pglast takes 50 ms or more to import, which commands that
    # read no SQL file (--version among them) need not pay.
    from pglast import parser

    sql = strip_bom(sql)
    try:
        # The JSON form is several times faster to get than pglast's Python nodes.
        tree = json.loads(parser.parse_sql_json(sql))
    except parser.ParseError as exc:
        message, index = exc.args[0], exc.args[1] if len(exc.args) > 1 else None
        at = len(sql) if index is None else index
        raise ScriptSyntaxError(sql.count("\n", 0, at) + 1, str(message)) from None
    raw = sql.encode("utf-8")
    out = []
    byte = char = 0  # the parser counts bytes; walk both offsets forward together
    line = 1
    for entry in tree.get("stmts", ()):
        start_byte = entry.get("stmt_location", 0)
        length = entry.get("stmt_len", 0)
        end_byte = start_byte + length if length else len(raw)
        start = char + len(raw[byte:start_byte].decode("utf-8"))
        end = start + len(raw[start_byte:end_byte].decode("utf-8"))
        line += sql.count("\n", char, start)
        byte, char = start_byte, start
        ((kind, node),) = entry["stmt"].items()
        out.append(Statement(sql[start:end].rstrip(), line, kind, node))
    return out


_CONTROL = {
    "TRANS_STMT_BEGIN",
    "TRANS_STMT_START",
    "TRANS_STMT_COMMIT",
    "TRANS_STMT_ROLLBACK",
    "TRANS_STMT_PREPARE",
    "TRANS_STMT_COMMIT_PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED",
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

    def ends_transaction(self, statement: Statement) -> bool:
        """Whether ``statement`` leaves the enclosing transaction; track its savepoints."""
        if statement.kind != "TransactionStmt":
            return False
        kind = statement.node.get("kind", "TRANS_STMT_BEGIN")  # zero values are left out
        if kind in _CONTROL:
            return True
        name = statement.node.get("savepoint_name", "")
        if kind == "TRANS_STMT_SAVEPOINT":
            self._names.append(name)
            return False
        if name not in self._names:
            return True  # RELEASE / ROLLBACK TO a savepoint made before this script
        last = len(self._names) - 1 - self._names[::-1].index(name)
        del self._names[last if kind == "TRANS_STMT_RELEASE" else last + 1 :]
        return False


def transaction_control(statements: list[Statement]) -> Statement | None:
    """The first statement that begins, ends or prepares a transaction, if any.

    ``DO`` blocks and routine bodies are not looked into: PostgreSQL itself refuses a
    ``COMMIT`` or ``ROLLBACK`` in them while a transaction block is open.
    """
    savepoints = Savepoints()
    for statement in statements:
        if savepoints.ends_transaction(statement):
            return statement
    return None


_ALWAYS_OUTSIDE = {
    "CreatedbStmt",
    "DropdbStmt",
    "CreateTableSpaceStmt",
    "DropTableSpaceStmt",
    "AlterSystemStmt",
}
_REINDEX_MANY = {"REINDEX_OBJECT_SCHEMA", "REINDEX_OBJECT_SYSTEM", "REINDEX_OBJECT_DATABASE"}


def needs_no_transaction(statement: Statement) -> bool:
    """Whether PostgreSQL refuses to run ``statement`` inside a transaction block."""
    kind, node = statement.kind, statement.node
    if kind == "VacuumStmt":
        return bool(node.get("is_vacuumcmd"))  # a lone ANALYZE may run in a transaction
    if kind in ("IndexStmt", "DropStmt"):
        return bool(node.get("concurrent"))
    if kind == "ReindexStmt":
        return node.get("kind") in _REINDEX_MANY or _has_option(node.get("params"), "concurrently")
    if kind == "ClusterStmt":
        return "relation" not in node  # CLUSTER of every table
    if kind == "DiscardStmt":
        return bool(node.get("target", "DISCARD_ALL") == "DISCARD_ALL")
    if kind == "AlterDatabaseStmt":
        return _has_option(node.get("options"), "tablespace")
    if kind == "AlterTableStmt":
        return any(
            cmd.get("AlterTableCmd", {}).get("def", {}).get("PartitionCmd", {}).get("concurrent")
            for cmd in node.get("cmds", ())
        )
    if kind == "CreateSubscriptionStmt":
        return not any(
            name in ("create_slot", "connect") and _is_false(arg)
            for name, arg in _options(node.get("options"))
        )
    return kind in _ALWAYS_OUTSIDE


def client_copy(statement: Statement) -> bool:
    """``COPY ... FROM STDIN`` / ``TO STDOUT``: they need a data stream mtm cannot feed."""
    node = statement.node
    return statement.kind == "CopyStmt" and "filename" not in node and not node.get("is_program")


def _options(options: Any) -> list[tuple[str, Any]]:
    """(name, argument) of a list of DefElem nodes."""
    found = []
    for option in options or ():
        elem = option.get("DefElem") if isinstance(option, dict) else None
        if elem is not None:
            found.append((elem.get("defname", ""), elem.get("arg")))
    return found


def _has_option(options: Any, name: str) -> bool:
    return any(found == name for found, _ in _options(options))


def _is_false(arg: Any) -> bool:
    """A DefElem argument meaning false: false, off, no, 0 (written in any of its forms)."""
    if not isinstance(arg, dict):
        return False
    if "Boolean" in arg:
        return not arg["Boolean"].get("boolval", False)
    if "Integer" in arg:
        return not arg["Integer"].get("ival", 0)
    words = [arg.get("String", {}).get("sval")]
    if "TypeName" in arg:  # a bare word such as off
        words = [n.get("String", {}).get("sval") for n in arg["TypeName"].get("names", ())]
    return len(words) == 1 and str(words[0]).lower() in ("false", "off", "no", "0")
