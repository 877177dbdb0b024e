"""The size rule of the code: small modules, short functions, or a reason written down.

No module in src/mtm may pass 450 lines. A function (or method) over 60 lines must say
why in its docstring, in a sentence "Longer than most: <the reason>" (the reason at least
four words), so that a long function is a decision someone wrote down, not an accident.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "mtm"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
REASON = re.compile(r"Longer than most:(\s+\S+){4,}")


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _too_long_functions(source: str) -> list[str]:
    """Functions over the limit without a "Longer than most:" reason, as "name (N lines)".

    A function's lines run from its first decorator to its last line.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        length = (node.end_lineno or node.lineno) - first + 1
        docstring = ast.get_docstring(node) or ""
        if length > MAX_FUNCTION_LINES and not REASON.search(docstring):
            found.append(f"{node.name} ({length} lines)")
    return found


def test_the_check_sees_a_long_function_and_its_reason() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    assert _too_long_functions(f"def f():\n{body}") == [f"f ({MAX_FUNCTION_LINES + 1} lines)"]
    reasoned = f'def f():\n    """Do it.\n\n    Longer than most: it lists every case."""\n{body}'
    assert _too_long_functions(reasoned) == []
    no_reason = f'def f():\n    """Longer than most: yes."""\n{body}'
    assert _too_long_functions(no_reason) == [f"f ({MAX_FUNCTION_LINES + 2} lines)"]
    short = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    assert _too_long_functions(f"def f():\n{short}") == []
    nested = f"class C:\n    @staticmethod\n    async def g():\n{body.replace('    ', '        ')}"
    assert _too_long_functions(nested) == [f"g ({MAX_FUNCTION_LINES + 2} lines)"]


def test_modules_are_small() -> None:
    assert _modules(), SRC
    too_long = {
        str(path.relative_to(SRC)): n
        for path in _modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}


def test_long_functions_say_why() -> None:
    unexplained = {
        str(path.relative_to(SRC)): found
        for path in _modules()
        if (found := _too_long_functions(path.read_text(encoding="utf-8")))
    }
    assert unexplained == {}
