"""Files that list schemas, one a line (``migrate --tenant-file``, ``create --existing
--from-file``): read once here so both options accept the same text and fail alike."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UsageError


def numbered_lines(path: str | Path, option: str) -> list[tuple[int, list[str]]]:
    """The words of each line that has any, with its line number: blank lines and ``#``
    comments skipped, a byte-order mark ignored, ``-`` read from standard input. A file
    that cannot be read is one line naming ``option`` and the reason (exit 2)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path} is not UTF-8 text") from None
    out: list[tuple[int, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if words:
            out.append((number, words))
    return out
