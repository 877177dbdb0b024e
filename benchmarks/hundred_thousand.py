#!/usr/bin/env python3
"""100,000 tenants: create stays flat, the no-op commands stay cheap, memory stays small.

    python benchmarks/hundred_thousand.py [--dsn URL] [--tenants 100000] [--block 1000]
                                          [--small 10] [--rounds 3] [--skip-build] [--keep]
                                          [--untimed N]

Never part of CI: at 100,000 tenants the build takes 10-20 minutes and a few GB. Without
``--dsn`` it starts an embedded PostgreSQL in a temporary folder (then ``--skip-build``
and ``--keep`` make no sense). It makes two databases, ``mtm_100k_small`` (``--small``
tenants) and ``mtm_100k_large`` (``--tenants``), each holding a one-table tenant
workload, and creates every tenant through mtm's real create path: ``db.create(schema)``
on one ``mtm.connect(config)`` (the kept connection), timing each block of ``--block``
tenants. Then it runs ``mtm migrate`` (nothing to do), ``status``, ``status --json``,
``tenants`` and ``validate`` as real processes on both fleets, sides interleaved,
``--rounds`` times, keeping medians and each process's peak RSS (``wait4``).

The last block takes turns, one create each, with the first block of a fresh database
(dropped after it), so that the two ends are also compared in the same minutes of a
shared machine. ``--keep`` leaves both databases (else they are dropped at the end);
``--skip-build`` reuses them, and if the large one has fewer than ``--tenants``
tenants (a run stopped early), creates the rest the same way, from where it stopped.
``--untimed N`` makes the large fleet's first N tenants with mtm's create scripts, 100
a round trip, untimed (``startup.bulk_create``), for a server where a million files'
worth of timed creates would take hours; the timed blocks start after them, so the
first-block-to-last target is then not measured, only the last block against a fresh
database's.

Targets (issue "speed, round two", target 4): create time per tenant of the last block
<= 1.2x the first ("flat") and <= 1.2x the fresh database's in turn; no-op ``migrate``
and ``status`` at the large fleet <= 1.5x the same at the small fleet; peak RSS of
every command < 200 MB. The other commands' ratios are printed for information.
Results go to ``benchmarks/results/hundred_thousand.json`` (not committed).
"""

from __future__ import annotations

import argparse
import compileall
import itertools
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import fleet
import psycopg
import startup

import mtm
from mtm import Config
from mtm.registry import count_tenants

TENANT_TABLE = "CREATE TABLE notes (id bigserial PRIMARY KEY, body text);\n"
COMMANDS = [
    ("migrate", ["migrate"], 1.5),
    ("status", ["status"], 1.5),
    ("status --json", ["status", "--json"], None),
    ("tenants", ["tenants"], None),
    ("validate", ["validate"], None),
]
RSS_LIMIT_MB = 200.0
# A child's peak RSS as wait4 reports it starts from the size of the process that
# forked it (its memory is the parent's until exec), and this one holds a fleet's
# worth of objects; a small launcher runs each command and reports its own figures.
LAUNCHER = (
    "import os, subprocess, sys, time; t0 = time.perf_counter(); "
    "p = subprocess.Popen(sys.argv[2:]); _, status, usage = os.wait4(p.pid, 0); "
    "open(sys.argv[1], 'w').write(f'{time.perf_counter() - t0} {usage.ru_maxrss}'); "
    "sys.exit(os.waitstatus_to_exitcode(status))"
)


def project(folder: Path, url: str, name: str) -> Config:
    """A project on database ``name``: one public table, one tenant table."""
    for ns, file, sql in (
        ("public", "0001_plans.sql", "CREATE TABLE plans (id int PRIMARY KEY);\n"),
        ("tenant", "0001_notes.sql", TENANT_TABLE),
    ):
        (folder / "migrations" / ns).mkdir(parents=True, exist_ok=True)
        (folder / "migrations" / ns / file).write_text(sql)
    rendered = fleet.with_database(url, name).replace("postgresql://", "postgresql+psycopg://", 1)
    (folder / "mtm.toml").write_text(f"database_url = {json.dumps(rendered)}\n")
    return Config.load(str(folder / "mtm.toml"), env={})


def fresh(url: str, name: str, folder: Path) -> Config:
    """A new database ``name`` with the project's public migration applied."""
    with psycopg.connect(fleet.libpq(url), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    folder.mkdir(parents=True, exist_ok=True)
    config = project(folder, url, name)
    mtm.migrate(config)  # not part of any tenant's create
    return config


def create_block(db: mtm.Database, start: int, stop: int) -> float:
    """Tenants ``start``..``stop - 1`` through the real create path; the seconds taken."""
    t0 = time.perf_counter()
    for i in range(start, stop):
        db.create(f"t{i:06d}")
    return time.perf_counter() - t0


def in_turn(large: mtm.Database, fresh_db: mtm.Database, start: int, stop: int) -> list[float]:
    """The large fleet's tenants ``start``..``stop - 1`` and as many first tenants of a
    fresh database, one create each in turn: (fresh, large) seconds, equally exposed to
    whatever else the machine is doing."""
    times = [0.0, 0.0]
    for i in range(stop - start):
        times[0] += create_block(fresh_db, i, i + 1)
        times[1] += create_block(large, start + i, start + i + 1)
    return times


def build(url: str, names: dict[str, str], folder: Path, args: argparse.Namespace) -> Any:
    """Both fleets, timed a block at a time; with ``--skip-build`` the databases of an
    earlier ``--keep`` run, a large fleet short of ``--tenants`` completed the same way.
    The last block takes turns, one create each, with the first block of a fresh
    database: the two ends of the fleet compared in the same minutes of a shared
    machine. Returns (from which tenant, seconds per block, (fresh, last) seconds)."""
    configs = {side: project(folder / side, url, name) for side, name in names.items()}
    begin = 0
    if args.skip_build:
        with mtm.connect(configs["large"]) as db, db.connection() as conn:
            begin = count_tenants(conn, configs["large"])
    else:
        with mtm.connect(fresh(url, names["small"], folder / "small")) as db:
            create_block(db, 0, args.small)
        fresh(url, names["large"], folder / "large")
    if args.untimed > begin:
        startup.log(f"tenants {begin:,} to {args.untimed - 1:,} by create scripts, untimed")
        startup.bulk_create(configs["large"], begin, args.untimed)
        begin = args.untimed
    bounds = [*range(begin, args.tenants, args.block), args.tenants] if begin < args.tenants else []
    blocks: list[float] = []
    control: list[float] = []
    with mtm.connect(configs["large"]) as db:
        for k, (start, stop) in enumerate(itertools.pairwise(bounds)):
            if stop == args.tenants and start > 0:
                other = f"{names['large']}_fresh"
                with mtm.connect(fresh(url, other, folder / "fresh")) as fresh_db:
                    control = in_turn(db, fresh_db, start, stop)
                drop(url, [other])
                blocks.append(control[1])
            else:
                blocks.append(create_block(db, start, stop))
            if (k + 1) % 10 == 0 or stop == args.tenants:
                per = 1000 * blocks[-1] / (stop - start)
                startup.log(f"{stop:,} tenants, last block {per:.2f} ms each")
    if blocks:
        fleet.settle(fleet.with_database(url, names["large"]), vacuum=True)
    with mtm.connect(configs["large"]) as db, db.connection() as conn:
        if (count := count_tenants(conn, configs["large"])) != args.tenants:
            sys.exit(f"the large fleet has {count:,} tenants, not {args.tenants:,}")
    return begin, blocks, control


def launch(cmd: list[str], cwd: Path) -> fleet.Child:
    """One process to its end through ``LAUNCHER``: its own wall time and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage"
        child = fleet.run_child([sys.executable, "-c", LAUNCHER, str(report), *cmd], cwd)
        if report.exists():
            seconds, rss_kb = report.read_text().split()
            child.seconds, child.max_rss_mb = float(seconds), int(rss_kb) / 1024
    return child


def commands(folder: dict[str, Path], rounds: int) -> dict[str, dict[str, Any]]:
    """Each command on both fleets, interleaved; median seconds and peak RSS per side."""
    runs: dict[str, list[fleet.Child]] = {}
    for r in range(rounds):
        for label, argv, _ in COMMANDS:
            for side in ("small", "large"):
                child = launch([*fleet.mtm_command(), *argv], folder[side])
                noop = argv != ["migrate"] or "nothing to do" in child.stdout
                if child.returncode != 0 or not child.stdout.strip() or not noop:
                    sys.exit(f"mtm {' '.join(argv)} failed on {side}:\n{child.stdout[-2000:]}")
                runs.setdefault(f"{label} ({side})", []).append(child)
        startup.log(f"round {r + 1} of {rounds} done")
    return {
        key: {
            "seconds": round(statistics.median(c.seconds for c in children), 3),
            "runs": [round(c.seconds, 3) for c in children],
            "max_rss_mb": round(max(c.max_rss_mb for c in children), 1),
        }
        for key, children in runs.items()
    }


def targets(res: dict[str, Any], tenants: int) -> list[dict[str, Any]]:
    """(target, measured, limit, met) rows; ``None`` limits are for information."""
    rows: list[tuple[str, float, float | None]] = []
    blocks, block = res["create_blocks_seconds"], res["meta"]["block"]
    if len(blocks) > 1 and res["meta"]["built_from"] == 0:
        last_size = tenants - block * (len(blocks) - 1)
        ratio = (blocks[-1] / last_size) / (blocks[0] / min(block, tenants))
        rows.append((f"create per tenant, last {last_size:,} vs first {block:,}", ratio, 1.2))
    if res["create_control"]:
        fresh_s, last_s = res["create_control"]["fresh_s"], res["create_control"]["last_s"]
        rows.append(("create per tenant, last block vs a fresh database's", last_s / fresh_s, 1.2))
    cmd = res["commands"]
    for label, _, limit in COMMANDS:
        ratio = cmd[f"{label} (large)"]["seconds"] / cmd[f"{label} (small)"]["seconds"]
        rows.append((f"{label} at {tenants:,} vs small", ratio, limit))
    for key, value in cmd.items():
        rows.append((f"peak RSS MB, {key}", value["max_rss_mb"], RSS_LIMIT_MB))
    return [
        {"target": t, "value": round(v, 3), "limit": lim, "met": None if lim is None else v <= lim}
        for t, v, lim in rows
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = {"small": f"{args.prefix}_small", "large": f"{args.prefix}_large"}
    res: dict[str, Any] = {"create_blocks_seconds": [], "create_control": {}}
    with ExitStack() as stack:
        url = stack.enter_context(startup.server(args.dsn))
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtm-100k-")))
        if not args.keep:
            stack.callback(drop, url, list(names.values()))
        for side in names:
            (base / side).mkdir()
        compileall.compile_dir(Path(mtm.__file__).parent, quiet=1)  # as startup.py does
        t0 = time.perf_counter()
        begin, blocks, control = build(url, names, base, args)
        startup.log(f"built in {time.perf_counter() - t0:.0f} s (from tenant {begin:,})")
        res["create_blocks_seconds"] = [round(b, 3) for b in blocks]
        if control:
            size = args.tenants - max(begin, args.block * (len(blocks) - 1))
            res["create_control"] = {"tenants": size, "fresh_s": control[0], "last_s": control[1]}
        res["commands"] = commands({side: base / side for side in names}, args.rounds)
        res["meta"] = {
            "tenants": args.tenants,
            "small": args.small,
            "block": args.block,
            "rounds": args.rounds,
            "server_version": fleet.server_version(url),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "built_from": begin,
        }
        res["targets"] = targets(res, args.tenants)
        return res


def drop(url: str, names: list[str]) -> None:
    startup.log(f"dropping {', '.join(names)}")
    with psycopg.connect(fleet.libpq(url), autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def render(res: dict[str, Any]) -> str:
    meta = res["meta"]
    lines = [f"mtm at {meta['tenants']:,} tenants, PostgreSQL {meta['server_version']}", ""]
    blocks, control = res["create_blocks_seconds"], res["create_control"]
    if blocks:
        per = [1000 * b / meta["block"] for b in blocks[:-1]]  # the full blocks, timed alone
        lines.append(
            f"create from tenant {meta['built_from']:,}: {sum(blocks):.0f} s"
            + (f"; ms per tenant: first block {per[0]:.2f}, slowest {max(per):.2f}" if per else "")
        )
    if control:
        size = control["tenants"]
        lines.append(
            f"last {size:,} creates, one each in turn with a fresh database: "
            f"{1000 * control['last_s'] / size:.2f} ms vs {1000 * control['fresh_s'] / size:.2f} ms"
        )
    lines.append(f"{'command':<26} {'seconds':>8} {'peak RSS':>9}")
    for key, value in res["commands"].items():
        lines.append(f"{key:<26} {value['seconds']:>8.3f} {value['max_rss_mb']:>6.0f} MB")
    lines.append("")
    for row in res["targets"]:
        mark = {True: "met", False: "NOT MET", None: "(information)"}[row["met"]]
        limit = f"<= {row['limit']:g}" if row["limit"] is not None else ""
        lines.append(f"  {row['target']:<44} {row['value']:>9.2f} {limit:>9}  {mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dsn", help="a PostgreSQL URL (default: start an embedded server)")
    ap.add_argument("--tenants", type=int, default=100_000)
    ap.add_argument("--block", type=int, default=1000, help="tenants per timed create block")
    ap.add_argument("--small", type=int, default=10, help="tenants of the small fleet")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each command (median)")
    ap.add_argument("--skip-build", action="store_true", help="reuse a --keep run's databases")
    ap.add_argument("--keep", action="store_true", help="leave the databases for --skip-build")
    ap.add_argument(
        "--untimed",
        type=int,
        default=0,
        metavar="N",
        help="the large fleet's first N tenants by create scripts, untimed (slow servers)",
    )
    ap.add_argument("--prefix", default="mtm_100k", help="database names: PREFIX_small/_large")
    default_out = fleet.ROOT / "benchmarks" / "results" / "hundred_thousand.json"
    ap.add_argument("--out", type=Path, default=default_out)
    args = ap.parse_args(argv)
    if (args.skip_build or args.keep) and not args.dsn:
        ap.error("--skip-build and --keep need --dsn (an embedded server is thrown away)")
    res = run(args)
    print(render(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    startup.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
