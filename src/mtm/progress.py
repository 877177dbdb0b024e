"""What a display is told while a run goes on; the CLI's live view implements it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .results import SchemaResult


class Progress(Protocol):
    """What a display is told while a run goes on (called from worker threads)."""

    def begin(self, schemas: int, steps: int) -> None: ...
    def step(self, worker: int, schema: str, migration: str) -> None: ...
    def schema_done(self, worker: int, result: SchemaResult) -> None: ...
    def end(self) -> None: ...


class NoProgress:
    def begin(self, schemas: int, steps: int) -> None:
        pass

    def step(self, worker: int, schema: str, migration: str) -> None:
        pass

    def schema_done(self, worker: int, result: SchemaResult) -> None:
        pass

    def end(self) -> None:
        pass
