"""Showing runs and results to people: live progress, plain lines, tables, JSON.

Made for fleets: one live view (overall progress, rate, ETA, failures, what each worker
is doing) rather than one bar per tenant; status groups tenants by their step unless
asked for single ones.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Collection
from typing import IO, TYPE_CHECKING, Any

from .ledger import AppliedMigration
from .plan import StampChange
from .results import (
    MigrateResult,
    SchemaResult,
    SchemaStatus,
    StampResult,
    StatusResult,
    TablesUpgrade,
)
from .words import plural

if TYPE_CHECKING:  # rich is imported where it draws: JSON output needs none of it
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table

LIST_LIMIT = 50  # above this many tenants, status and plain progress summarise


def _fmt_rate(done: int, elapsed: float) -> str:
    return f"{done / elapsed:,.1f}/s" if elapsed > 0 else "-"


def _fmt_eta(done: int, total: int, elapsed: float) -> str:
    if done == 0 or elapsed <= 0:
        return "-"
    left = (total - done) * elapsed / done
    return f"{left:,.0f}s" if left >= 1 else "<1s"


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.steps_total = 0
        self.done = 0
        self.steps = 0
        self.failed: list[SchemaResult] = []
        self.started = time.perf_counter()
        self.workers: dict[int, str] = {}

    def record(self, result: SchemaResult) -> None:
        self.done += 1
        self.steps += len(result.applied) + len(result.reverted)
        if not result.ok:
            self.failed.append(result)


class LiveProgress:
    """A live terminal view for a run."""

    def __init__(self, console: Console, display_name: str = "*PUBLIC") -> None:
        self.console = console
        self.display_name = display_name
        self.c = _Counts()
        self.live: Live | None = None

    def _name(self, schema: str) -> str:
        return self.display_name if schema == "public" else schema

    def begin(self, schemas: int, steps: int) -> None:
        from rich.live import Live

        self.c = _Counts()
        self.c.total, self.c.steps_total = schemas, steps
        self.live = Live(
            self._render(),
            console=self.console,
            refresh_per_second=8,
            transient=False,
            get_renderable=self._render,
        )
        self.live.start()

    def step(self, worker: int, schema: str, migration: str) -> None:
        with self.c.lock:
            self.c.workers[worker] = f"{self._name(schema)} -> {migration}"

    def schema_done(self, worker: int, result: SchemaResult) -> None:
        with self.c.lock:
            self.c.record(result)
            self.c.workers[worker] = "idle"

    def end(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _render(self) -> Group:
        from rich.console import Group
        from rich.text import Text

        c = self.c
        elapsed = time.perf_counter() - c.started
        width = 20
        filled = int(width * c.done / c.total) if c.total else width
        bar = Text("[" + "#" * filled + "." * (width - filled) + "]")
        # Two short lines, failures first: on an 80-column terminal one long line lost
        # its end (the failure count) to cropping.
        head = Text.assemble(
            bar,
            f" {c.done:,}/{c.total:,} schemas  ",
            (f"{len(c.failed):,} failed", "bold red" if c.failed else "green"),
        )
        rate = f"{c.done / elapsed:,.1f}" if elapsed > 0 else "-"
        pace = Text(
            f"  {c.steps:,}/{c.steps_total:,} steps  {rate} schemas/s  "
            f"ETA {_fmt_eta(c.done, c.total, elapsed)}  {elapsed:,.0f}s elapsed"
        )
        lines: list[Any] = [head, pace]
        for w in sorted(c.workers):
            lines.append(Text(f"  worker {w + 1}: {c.workers[w]}", style="dim"))
        for f in c.failed[-3:]:
            lines.append(
                Text(
                    f"  FAILED {self._name(f.schema)} at {f.failed_migration}: {f.error}",
                    style="red",
                )
            )
        return Group(*lines)


class PlainProgress:
    """Lines for logs: one per finished schema for small runs, periodic for fleets."""

    def __init__(self, out: IO[str], display_name: str = "*PUBLIC", every: float = 2.0) -> None:
        self.out = out
        self.display_name = display_name
        self.every = every
        self.c = _Counts()
        self.last = 0.0

    def _name(self, schema: str) -> str:
        return self.display_name if schema == "public" else schema

    def begin(self, schemas: int, steps: int) -> None:
        self.c = _Counts()
        self.c.total, self.c.steps_total = schemas, steps
        self.last = time.perf_counter()
        if schemas > LIST_LIMIT:
            self._line(f"migrating {plural(schemas, 'schema')} ({plural(steps, 'step')})")

    def step(self, worker: int, schema: str, migration: str) -> None:
        pass

    def schema_done(self, worker: int, result: SchemaResult) -> None:
        with self.c.lock:
            self.c.record(result)
            if not result.ok:
                self._line(
                    f"{self._name(result.schema)}: FAILED at {result.failed_migration}: "
                    f"{result.error}"
                )
            elif self.c.total <= LIST_LIMIT:
                done = result.applied or result.reverted
                verb = "reverted" if result.reverted else "applied"
                self._line(
                    f"{self._name(result.schema)}: {verb} {len(done):,} "
                    f"({', '.join(done)}) in {result.seconds:.2f}s"
                )
            now = time.perf_counter()
            if self.c.total > LIST_LIMIT and now - self.last >= self.every:
                self.last = now
                self._summary()

    def _summary(self) -> None:
        c = self.c
        elapsed = time.perf_counter() - c.started
        self._line(
            f"{c.done:,}/{plural(c.total, 'schema')}, {plural(c.steps, 'step')}, "
            f"{len(c.failed):,} failed, "
            f"{_fmt_rate(c.done, elapsed)}, ETA {_fmt_eta(c.done, c.total, elapsed)}"
        )

    def end(self) -> None:
        if self.c.total > LIST_LIMIT:
            self._summary()

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


# --- results ---------------------------------------------------------------------------


def migrate_summary(result: MigrateResult, display_name: str) -> list[str]:
    """The closing lines of a migrate run: what was done and, on failure, exactly where."""
    lines: list[str] = []

    def name(schema: str) -> str:
        return display_name if schema == "public" else schema

    if result.tables is not None:
        lines.append(tables_line(result.tables))
    if result.to is not None:
        lines.append(_to_line(result.to))
    if result.dry_run:
        pp = result.public_plan
        if pp is not None and pp.pending:
            lines.append(f"{display_name}: would apply {', '.join(m.name for m in pp.pending)}")
        for p in result.tenant_plans[:LIST_LIMIT]:
            lines.append(f"{p.schema}: would apply {', '.join(m.name for m in p.pending)}")
        if len(result.tenant_plans) > LIST_LIMIT:
            lines.append(f"... and {plural(len(result.tenant_plans) - LIST_LIMIT, 'more tenant')}")
        steps = (len(pp.pending) if pp else 0) + sum(len(p.pending) for p in result.tenant_plans)
        lines.append(
            f"dry run: {plural(steps, 'step')} in {len(result.tenant_plans):,} of "
            f"{plural(result.tenants_total, 'tenant')} (+ public: {len(pp.pending) if pp else 0})"
            "; nothing was changed"
        )
        return lines
    o = result.outcome
    for f in result.failures:
        lines.append(f"FAILED {name(f.schema)}: migration {f.failed_migration}: {f.error}")
    for e in o.connection_errors:
        lines.append(f"FAILED to open a worker connection: {e}")
    migrated = o.schemas - len(o.failures) - len(o.dropped)
    at_head = result.tenants_total - len(result.tenant_plans)
    if result.steps == 0 and not result.failures and not o.connection_errors:
        lines.append(
            f"nothing to do: public and {plural(result.tenants_total, 'tenant')} at head "
            f"({result.seconds:.2f}s)"
        )
        return lines
    parts = [f"{plural(result.steps, 'step')} applied"]
    if result.public is not None:
        parts.append("public " + ("migrated" if result.public.ok else "FAILED"))
    parts.append(f"{plural(migrated, 'tenant')} migrated")
    if o.failures:
        parts.append(f"{len(o.failures):,} failed")
    if o.not_started:
        parts.append(f"{o.not_started:,} not started")
    if o.dropped:
        parts.append(f"{len(o.dropped):,} dropped during the run")
    parts.append(f"{at_head:,} already at head")
    lines.append(", ".join(parts) + f" in {result.seconds:.2f}s")
    if o.interrupted:
        lines.append("interrupted: running steps finished; run 'mtm migrate' again to go on")
    elif result.failures:
        lines.append(
            "every schema is at a clean step; fix the migration and run 'mtm migrate' "
            "again to go on from where each stopped"
        )
    return lines


def _to_line(to: str) -> str:
    """What ``migrate --to`` does, and what it leaves."""
    namespace, _, target = to.partition(":")
    other = "the tenants were" if namespace == "public" else "the public schema was"
    return f"--to {to}: up to {target} and no further; {other} left as is"


def stamp_line(change: StampChange, display_name: str) -> str:
    """What ``stamp`` will change in one schema, printed before it changes anything."""
    label = display_name if change.schema == "public" else change.schema
    if change.delete:
        return f"{label}: delete the records of {', '.join(change.delete)}"
    return f"{label}: record as applied (not run) {', '.join(m.name for m in change.record)}"


def stamp_json(result: StampResult) -> dict[str, Any]:
    return {
        "namespace": result.namespace,
        "name": result.name,
        "delete": result.delete,
        "schemas": [
            {"schema": c.schema, "recorded": [m.name for m in c.record], "deleted": list(c.delete)}
            for c in result.changes
        ],
    }


def tables_line(upgrade: TablesUpgrade) -> str:
    """What happened to mtm's own tables before the migrations."""
    span = f"from version {upgrade.from_version} to {upgrade.to_version}"
    ledgers = f"{upgrade.ledgers:,} {'ledger' if upgrade.ledgers == 1 else 'ledgers'}"
    if not upgrade.done:
        return f"mtm's tables would be upgraded {span} ({ledgers}, in one transaction)"
    return f"upgraded mtm's tables {span} ({ledgers}) in {upgrade.seconds:.2f}s"


def migrate_json(result: MigrateResult) -> dict[str, Any]:
    o = result.outcome
    t = result.tables
    return {
        "ok": result.ok,
        "dry_run": result.dry_run,
        "to": result.to,
        "tables_upgrade": (
            {
                "from_version": t.from_version,
                "to_version": t.to_version,
                "ledgers": t.ledgers,
                "done": t.done,
                "seconds": round(t.seconds, 3),
            }
            if t
            else None
        ),
        "seconds": round(result.seconds, 3),
        "steps": result.steps,
        "tenants_total": result.tenants_total,
        "tenants_pending": len(result.tenant_plans),
        "tenants_migrated": o.schemas - len(o.failures),
        "not_started": o.not_started,
        "interrupted": o.interrupted,
        "dropped": list(o.dropped),
        "public": (
            {"applied": result.public.applied, "ok": result.public.ok} if result.public else None
        ),
        "plan": (
            {
                "public": [m.name for m in result.public_plan.pending]
                if result.public_plan
                else [],
                "tenants": {p.schema: [m.name for m in p.pending] for p in result.tenant_plans},
            }
            if result.dry_run
            else None
        ),
        "failures": [
            {"schema": f.schema, "migration": f.failed_migration, "error": f.error}
            for f in result.failures
        ]
        + [{"schema": None, "migration": None, "error": e} for e in o.connection_errors],
    }


def status_json(result: StatusResult, ahead: Collection[str] = ()) -> dict[str, Any]:
    def one(s: SchemaStatus) -> dict[str, Any]:
        return {
            "schema": s.schema,
            "name": s.name,
            "domains": list(s.domains),
            "applied": s.applied,
            "total": s.total,
            "last_applied": s.last_applied,
            "pending": s.pending,
            "problems": s.problems,
        } | ({} if result.nodes is None else {"node": result.nodes.get(s.schema)})

    count, at_head = result.counts()
    return {
        "public": one(result.public),
        "tenants": ({**one(t), "ahead": t.schema in ahead} for t in result.tenants),  # streamed
        "summary": {"tenants": count, "at_head": at_head, "pending": result.pending},
    }


_COLUMNS = ("schema", "domains", "applied", "last applied", "pending")


def status_table(
    result: StatusResult, *, list_all: bool = False, ahead: Collection[str] = ()
) -> list[Any]:
    """Renderables: a row per schema for small fleets (or on request), else groups;
    tenants ``ahead`` of the rest (``rollout.ahead``) marked."""
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = []
    listing = result.summary is None and (list_all or len(result.tenants) <= LIST_LIMIT)
    table = Table(title=None, show_lines=False)
    for col in _COLUMNS + (("node",) if result.nodes is not None else ()):  # node: Citus
        right = col in ("applied", "pending")
        table.add_column(col, justify="right" if right else "left", overflow="fold")

    def row(s: SchemaStatus, label: str) -> None:
        pending = str(len(s.pending)) if not s.problems else "DRIFT"
        style = None if s.at_head else ("red" if s.problems else "yellow")
        table.add_row(
            label,
            ", ".join(s.domains),
            f"{s.applied}/{s.total}",
            s.last_applied or "-",
            pending,
            *([] if result.nodes is None else [result.nodes.get(s.schema, "-")]),
            style=style,
        )

    row(result.public, result.display_name)
    if listing:
        for t in result.tenants:
            row(t, f"{t.schema} (ahead)" if t.schema in ahead else t.schema)
    out.append(table)
    if not listing:
        groups = Table(title=None)
        groups.add_column("tenants", justify="right")
        groups.add_column("position", overflow="fold")
        for count, applied, pending, problems in result.groups():
            if problems:
                where = "disagree with their files (run 'mtm validate')"
            elif not pending:
                where = f"at head ({applied}/{result.total_tenant_migrations})"
            else:
                names = ", ".join(pending[:3]) + (" ..." if len(pending) > 3 else "")
                where = f"{len(pending)} behind: {names} pending"
            groups.add_row(f"{count:,}", where)
        out.append(groups)
    count, at_head = result.counts()
    pub = "at head" if result.public.at_head else f"{len(result.public.pending)} pending"
    out.append(
        Text(
            f"{plural(count, 'tenant')}: {at_head:,} at head, "
            f"{count - at_head:,} behind; public {pub}"
        )
    )
    for s in [result.public, *(t for t, _ in result.positions())]:
        for p in s.problems[:10]:
            out.append(Text(p, style="red"))
    return out


def history_table(rows: list[AppliedMigration]) -> Table:
    from rich.table import Table

    table = Table()
    for col in ("migration", "applied at", "ms", "checksum"):
        table.add_column(col, justify="right" if col == "ms" else "left", overflow="fold")
    for r in rows:
        ms = f"{r.duration_ms:.1f}" if r.duration_ms is not None else "-"
        table.add_row(r.name, r.applied_at.strftime("%Y-%m-%d %H:%M:%S %Z"), ms, r.checksum[:12])
    return table


def dump_json(data: Any, out: IO[str] | None = None) -> None:
    (out or sys.stdout).write(json.dumps(data, indent=2, default=str) + "\n")
