"""Log output of the command line: levels from ``-v``/``-q``, text or JSON lines on stderr.

The library only logs (under ``mtm.<area>``, each record with ``extra={"event": ...}``)
and never configures handlers; this module is what the CLI adds on top. Every record
passes a filter that masks passwords, in the message and in every field, so a URL that
slipped into a record never shows its secret.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

LOGGER = "mtm"
FORMATS = ("text", "json")

# Attributes every LogRecord has: the rest are the fields a caller passed in ``extra``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def level_for(verbose: int, quiet: bool) -> int:
    """Default WARNING; ``-v`` INFO; ``-vv`` DEBUG; ``-q`` ERROR."""
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The extra fields of a record (``event``, ``schema``, ``duration_ms``...)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class MaskPasswords(logging.Filter):
    """Replaces any password in the message or a string field with ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        from .config import mask_url

        record.msg = mask_url(record.getMessage())
        record.args = None
        for key, value in fields(record).items():
            if isinstance(value, str):
                setattr(record, key, mask_url(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        extra = fields(record)
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": extra.pop("event", None),
            "message": record.getMessage(),
        }
        out.update(extra)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message (key=value ...)`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extra = fields(record)
        tail = " ".join(f"{k}={v}" for k, v in extra.items() if k != "event")
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        return f"{line} ({tail})" if tail else line


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def configure(
    verbose: int = 0, quiet: bool = False, fmt: str = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Send the ``mtm`` logger's records to ``stream`` (default: the current stderr);
    replaces the handler an earlier call added."""
    unconfigure()
    logger = logging.getLogger(LOGGER)
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    setattr(handler, "_mtm_cli", logger.level)  # noqa: B010 - marks it; the level before
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(MaskPasswords())
    logger.addHandler(handler)
    logger.setLevel(level_for(verbose, quiet))
    return handler


def unconfigure() -> None:
    """Take back what ``configure`` did (the CLI run in-process, as tests do, ends)."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if hasattr(h, "_mtm_cli")]:
        logger.removeHandler(handler)
        logger.setLevel(getattr(handler, "_mtm_cli"))  # noqa: B009
