"""Showing staged rollouts: the canaries before they run, what was held back after,
which tenants ``status`` finds ahead of the rest; as lines and as JSON."""

from __future__ import annotations

from typing import Any

from .results import MigrateResult, Rollout
from .rollout import Ahead
from .words import plural

NAMES_SHOWN = 50  # canaries named one by one; above that, "and N more"


def _names(schemas: list[str]) -> str:
    shown = ", ".join(schemas[:NAMES_SHOWN])
    more = len(schemas) - NAMES_SHOWN
    return shown + (f" and {more:,} more" if more > 0 else "")


def _others(n: int) -> str:
    return "the other tenant" if n == 1 else f"the other {n:,} tenants"


def stage_line(staged: Rollout) -> str:
    """What starts now: the canaries (before anything runs), or the rest after them."""
    if staged.rest_started:
        return f"every canary succeeded: migrating {_others(len(staged.rest))}"
    pending = len(staged.canaries) + len(staged.rest)
    if not staged.canaries:
        return "canaries: none (no selected tenant has pending work)"
    return (
        f"canaries ({len(staged.canaries):,} of {plural(pending, 'tenant')} with pending work, "
        f"first by md5(schema)): {_names(staged.canaries)}"
    )


def rollout_lines(result: MigrateResult) -> list[str]:
    """After the summary: what the rollout held back, and why."""
    staged = result.rollout
    if staged is None or not staged.rest:
        return []
    others = f"{_others(len(staged.rest))} with pending work"
    if result.dry_run:
        when = "then run if every canary succeeds" if staged.then_all else "would not be started"
        return [f"dry run: {others} {when}"]
    if staged.rest_started:
        return []
    were = "were" if len(staged.rest) > 1 else "was"
    if not staged.canaries_ok:
        return [f"{_why_stopped(result)}: {others} {were} not started"]
    return [
        f"stopped after the canaries: {others} {were} not started; "
        "run 'mtm migrate' (or add --then-all) to go on"
    ]


def _why_stopped(result: MigrateResult) -> str:
    if result.public is not None and not result.public.ok:
        return "public failed, so no canary started"
    if result.outcome.interrupted:
        return "interrupted during the canaries"
    if result.outcome.failures:
        return "a canary failed"
    return "a connection was lost during the canaries"


def rollout_json(staged: Rollout | None) -> dict[str, Any] | None:
    if staged is None:
        return None
    return {
        "canaries": staged.canaries,
        "rest": staged.rest,
        "then_all": staged.then_all,
        "canaries_ok": staged.canaries_ok,
        "rest_started": staged.rest_started,
    }


def ahead_line(found: Ahead) -> str:
    """``3 tenants ahead at tenant:0005_x; 997 at tenant:0004_y``."""
    later = [f"{n:,} at tenant:{name}" for name, n in reversed(found.positions)]
    first = plural(found.positions[-1][1], "tenant") + f" ahead at tenant:{found.positions[-1][0]}"
    rest = f"{found.bulk_count:,} at " + (
        f"tenant:{found.bulk}" if found.bulk is not None else "no tenant migration"
    )
    return "; ".join([", ".join([first, *later[1:]]), rest])


def ahead_json(found: Ahead | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "tenants": sorted(found.schemas),
        "positions": [{"last_applied": name, "tenants": n} for name, n in found.positions],
        "rest": {"last_applied": found.bulk, "tenants": found.bulk_count},
    }
