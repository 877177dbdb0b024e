"""Facts lint reads off PostgreSQL's parse tree (``pglast``'s nodes as dicts): the
functions an expression calls and which of them are volatile, a type's name and
modifiers, and whether changing a column's type rewrites its table. Pure, no rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VOLATILE = {
    "random",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "txid_current",
    "statement_timestamp",
}


def functions(expr: Any, *, subqueries: bool = True) -> set[str]:
    """Names of the functions an expression calls, lower case, without schema; without
    ``subqueries``, not those of its subqueries (``(SELECT clock_timestamp())``)."""
    found: set[str] = set()
    if isinstance(expr, dict):
        if not subqueries and "SubLink" in expr:
            return found
        call = expr.get("FuncCall")
        if isinstance(call, dict):
            names = call.get("funcname", ())
            if names:
                found.add(str(names[-1].get("String", {}).get("sval", "")).lower())
        for value in expr.values():
            found |= functions(value, subqueries=subqueries)
    elif isinstance(expr, list):
        for value in expr:
            found |= functions(value, subqueries=subqueries)
    return found


def base_type(node: Mapping[str, Any]) -> str:
    """A TypeName node's type, lower case, without schema or modifiers."""
    names = node.get("names", ())
    return str(names[-1].get("String", {}).get("sval", "")).lower() if names else ""


def type_mods(node: Mapping[str, Any]) -> list[int]:
    """A TypeName node's modifiers: (20) of varchar(20), (12, 2) of numeric(12, 2)."""
    return [m.get("A_Const", {}).get("ival", {}).get("ival", 0) for m in node.get("typmods", ())]


def show_type(node: Mapping[str, Any]) -> str:
    mods = type_mods(node)
    array = "[]" if node.get("arrayBounds") else ""
    return base_type(node) + (f"({','.join(map(str, mods))})" if mods else "") + array


_TEXTLIKE = {"varchar", "text"}


def no_rewrite(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether changing a column from ``old`` to ``new`` is known to need no rewrite."""
    if bool(old.get("arrayBounds")) != bool(new.get("arrayBounds")):
        return False
    a, b = base_type(old), base_type(new)
    ma, mb = type_mods(old), type_mods(new)
    if (a, ma) == (b, mb):
        return True
    if a in _TEXTLIKE and b in _TEXTLIKE:
        # Any varchar to text or to varchar without a length, or a longer varchar.
        return b == "text" or not mb or (a == "varchar" and bool(ma) and mb[0] >= ma[0])
    if a == b == "varbit":
        return not mb or (bool(ma) and mb[0] >= ma[0])
    if a == b == "numeric":
        if not mb:
            return True
        if not ma:
            return False
        scale_a = ma[1] if len(ma) > 1 else 0
        scale_b = mb[1] if len(mb) > 1 else 0
        return scale_a == scale_b and mb[0] >= ma[0]
    return False
