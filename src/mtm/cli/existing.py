"""``mtm create --existing``: the options of ``create`` that register schemas another
tool made, rendered here (``cli.tenants.create`` hands them over)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import click

from ..exits import Exit
from ..words import plural
from .shared import config_of

if TYPE_CHECKING:
    from ..existing import ExistingSchema, RegisterResult
    from ..migrations import Migration
    from ..results import SchemaResult

LIST_LIMIT = 50  # above this many schemas, progress is a line every few seconds


class RegisterProgress:
    """One line per schema for a few; for a fleet, counts every ``every`` seconds.
    A failure is always its own line, on stderr."""

    def __init__(self, out: IO[str], err: IO[str], every: float = 2.0) -> None:
        self.out, self.err, self.every = out, err, every
        self.total = self.done = self.failed = 0
        self.started = self.last = time.perf_counter()
        self.lock = threading.Lock()

    def begin(self, schemas: int, steps: int) -> None:
        self.total, self.started = schemas, time.perf_counter()
        self.last = self.started

    def step(self, worker: int, schema: str, migration: str) -> None:
        pass

    def schema_done(self, worker: int, result: SchemaResult) -> None:
        with self.lock:
            self.done += 1
            if not result.ok:
                self.failed += 1
                _line(self.err, f"FAILED {result.schema}: {result.error}")
            elif self.total <= LIST_LIMIT:
                _line(self.out, f"{result.schema}: registered")
            now = time.perf_counter()
            if self.total > LIST_LIMIT and now - self.last >= self.every:
                self.last = now
                self._counts()

    def end(self) -> None:
        if self.total > LIST_LIMIT:
            self._counts()

    def _counts(self) -> None:
        _line(
            self.out,
            f"{self.done:,}/{plural(self.total, 'schema')}, {self.failed:,} failed, "
            f"{time.perf_counter() - self.started:.1f}s",
        )


def _line(out: IO[str], text: str) -> None:
    out.write(text + "\n")
    out.flush()


def _show(
    items: Sequence[ExistingSchema], record: Sequence[Migration], skipped: Sequence[str]
) -> None:
    """What will change, before anything does."""
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        click.echo(f"skipping {plural(len(skipped), 'schema')} registered already: {shown}")
    if not items:
        click.echo("nothing to register: every schema named is registered already")
        return
    names = ", ".join(i.schema for i in items[:5]) + (" ..." if len(items) > 5 else "")
    what = (
        f"recording {plural(len(record), 'tenant migration')} up to {record[-1].name} "
        "as applied (not run)"
        if record
        else "recording no migration"
    )
    click.echo(f"will register {plural(len(items), 'existing schema')} ({names}), {what}")


def existing_options(f: Any) -> Any:
    """The options of ``create`` that register schemas another tool made."""
    options = [
        click.option(
            "--existing",
            is_flag=True,
            help="Register a schema another tool made, as it is; run nothing.",
        ),
        click.option(
            "--baseline",
            metavar="NAME",
            help="With --existing: record the tenant migrations up to NAME (or head) as applied.",
        ),
        click.option(
            "--from-file",
            metavar="FILE",
            help="With --existing: the schemas to register, one per line (domains after it).",
        ),
        click.option(
            "--match",
            metavar="PATTERN",
            help="With --existing: every schema not registered that this shell glob matches.",
        ),
        click.option(
            "--yes", is_flag=True, help="With --existing: needed for more than one schema."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def run_existing(
    ctx: click.Context,
    schema: str | None,
    domains: tuple[str, ...],
    name: str | None,
    unused: Sequence[str],
    *,
    existing: bool,
    baseline: str | None,
    from_file: str | None,
    match: str | None,
    yes: bool,
) -> None:
    """``create --existing``: one schema (SCHEMA) or many (--from-file, --match);
    ``unused`` are the options of ``create`` given that do not apply."""
    from .. import commands
    from ..errors import UsageError

    if not existing:
        raise UsageError("--baseline, --from-file, --match and --yes go with --existing")
    if unused:
        raise UsageError(f"--existing runs nothing and creates no role: drop {', '.join(unused)}")
    config = config_of(ctx)
    if schema is not None and from_file is None and match is None:
        result = commands.create_existing(
            config, schema, baseline=baseline, domains=domains, name=name
        )
        click.echo(
            f"registered existing schema {schema} as a tenant, "
            + (
                f"{plural(len(result.recorded), 'migration')} up to {result.baseline} "
                "recorded as applied (not run)"
                if result.recorded
                else "no migration recorded"
            )
        )
        return
    if domains or name is not None:
        raise UsageError(
            "--domain and --name are for one SCHEMA; with --from-file, put each schema's "
            "domains after it on its line"
        )
    if schema is not None:
        raise UsageError("give SCHEMA, --from-file FILE or --match PATTERN, not more than one")
    _report(
        commands.create_existing_many(
            config,
            from_file=from_file,
            match=match,
            baseline=baseline,
            yes=yes,
            show=_show,
            progress=RegisterProgress(sys.stdout, sys.stderr),
        ),
        ctx,
    )


def _report(result: RegisterResult, ctx: click.Context) -> None:
    click.echo(
        f"registered {plural(len(result.registered), 'schema')} in {result.seconds:.2f}s"
        + (f", {len(result.failed):,} failed" if result.failed else "")
        + ("; no migration was run" if result.registered else "")
    )
    if result.failed:
        for schema, reason in result.failed.items():
            click.echo(f"FAILED {schema}: {reason}", err=True)
        click.echo("fix them and run the same command again (registered schemas are skipped)")
        ctx.exit(Exit.FAILED)
