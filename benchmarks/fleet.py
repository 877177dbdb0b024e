#!/usr/bin/env python3
"""The fleet benchmark: mtm against the raw-psql floor, side by side on one server.

    python benchmarks/fleet.py [--dsn URL] [--tenants 1000] [--noop-tenants 10000]
                               [--jobs-list 1,2,4,8] [--phases create,fleet,noop]
                               [--workload DIR] [--raw-baseline FILE]

Without ``--dsn`` it starts an embedded PostgreSQL in a temporary folder (and stops it
at the end). Either way it makes two databases on that server, one for the raw floor
(``shared/bench/raw_baseline.py``, schemas ``bench_t00000``...) and one for mtm
(tenants ``acme00000``...), and drops both when done.

Phases, each timed on both sides where the floor has one:

* create at head: ``db.create(schema)`` once per tenant on one ``mtm.connect(config)``
  per chunk (creates in a row share one backend), against
  ``raw_baseline.py --one-tx --phase create`` (each tenant's create in one transaction),
  in chunks with the two sides taking turns;
* the fleet migration (``fleet/0011``) with ``mtm.migrate(config, jobs=J)`` for each J,
  against ``raw_baseline.py --phase fleet --jobs J``; between runs every tenant is put
  back (``mtm down --all-tenants`` and the same by hand on the raw side);
* no-op ``mtm migrate`` and ``mtm status`` over ``--noop-tenants`` tenants, as real
  command-line processes, end to end, with their peak RSS.

Prints a table with each phase's ratio to the floor and writes the same as JSON
(``benchmarks/results/fleet.json`` unless ``--out``). Absolute times on shared machines
drift from run to run; the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from mtm.keys import default

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RAW = ROOT.parent / "shared" / "bench" / "raw_baseline.py"
FLEET_DOWN = (
    "\n-- mtm:down\nDROP INDEX invoices_status_idx;\nALTER TABLE invoices DROP COLUMN currency;\n"
)
TENANT_PREFIX = "acme"
DEFAULT_JOBS: int = default("jobs")  # what `mtm migrate` uses without --jobs
PHASES = ("create", "fleet", "noop")

# Targets (limits); ratios are to the floor. The fleet on one connection at or below the
# floor, and at the default jobs at most 0.6x the floor's one connection.
TARGETS = {
    "fleet_jobs1_ratio": 1.0,
    "fleet_default_jobs_ratio": 0.6,
    "fleet_best_vs_raw_jobs1": 1.0,
    "create_ratio": 1.2,
    "noop_migrate_seconds": 1.0,
    "status_seconds": 1.0,
    "peak_rss_mb": 200.0,
}


def libpq(url: str) -> str:
    """A URL as libpq (psql, psycopg) takes it, whatever driver name it carries."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    return make_url(libpq(url)).set(database=name).render_as_string(hide_password=False)


def find_psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), reverse=True):
        return str(candidate)
    sys.exit("psql not found: the raw floor needs it (install postgresql-client)")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- the server and its databases -------------------------------------------------------


@contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from mtm.embedded import EmbeddedServer

    folder = Path(tempfile.mkdtemp(prefix="mtm-bench-"))
    os.chmod(folder, 0o755)  # the embedded server may run as its own system user
    embedded = EmbeddedServer(folder / "pgdata")
    log(f"starting an embedded PostgreSQL in {folder}")
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def database(url: str, name: str) -> Iterator[str]:
    with psycopg.connect(libpq(url), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        with psycopg.connect(libpq(url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


CATALOGS = "pg_class, pg_attribute, pg_namespace, pg_type, pg_depend, pg_index, pg_constraint"


def fleet_runs(
    config: Any,
    raw: Raw,
    n: int,
    jobs: int,
    repeat: int,
    before: Callable[[], None] = lambda: None,
) -> tuple[list[float], list[float]]:
    """The fleet migration on both sides, ``repeat`` runs each, who goes first
    alternating (so drift in the machine hits both); each run is undone after it
    (mtm down, the floor's reset). The runs' seconds: (mtm, floor)."""
    import mtm

    mtm_runs: list[float] = []
    raw_runs: list[float] = []
    for rep in range(repeat):
        for side in ("raw", "mtm") if rep % 2 == 0 else ("mtm", "raw"):
            before()
            if side == "raw":
                raw_runs.append(raw.run("--phase", "fleet", "--jobs", str(jobs)))
                raw.reset_fleet()
                continue
            t0 = time.perf_counter()
            result = mtm.migrate(config, jobs=jobs)
            mtm_runs.append(time.perf_counter() - t0)
            if not result.ok or result.steps != n:
                sys.exit(f"mtm migrate jobs={jobs} did not migrate every tenant")
            mtm.down(config, all_tenants=True)
    return mtm_runs, raw_runs


def settle(url: str, *, vacuum: bool = False) -> None:
    """Start a timed phase on an even footing: a checkpoint (so none falls inside the
    phase) and, after bulk DDL, the catalogs vacuumed (so autovacuum does not run
    during the phase). Either is skipped where the role may not do it."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        for sql in ([f"VACUUM ANALYZE {CATALOGS}"] if vacuum else []) + ["CHECKPOINT"]:
            try:
                conn.execute(sql)
            except psycopg.Error:
                pass


def server_version(url: str) -> str:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


# --- the raw floor ----------------------------------------------------------------------


@dataclass
class Raw:
    script: Path
    dsn: str
    tenants: int
    psql: str

    def run(self, *args: str, tenants: int | None = None) -> float:
        count = str(self.tenants if tenants is None else tenants)
        cmd = [sys.executable, str(self.script), "--dsn", self.dsn, "--tenants", count]
        cmd += ["--psql", self.psql, *args]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"raw baseline failed ({' '.join(args)}):\n{out.stdout}{out.stderr}")
        found = re.search(r"seconds=([0-9.]+)", out.stdout)
        if not found:
            sys.exit(f"raw baseline printed no timing: {out.stdout!r}")
        return float(found.group(1))

    def reset_fleet(self) -> None:
        """Undo fleet/0011 in every bench schema so the next run migrates them all again."""
        lines = ["SET client_min_messages TO warning;"]
        for t in range(self.tenants):
            s = f"bench_t{t:05d}"
            lines.append(
                f"BEGIN; DROP INDEX {s}.invoices_status_idx; "
                f"ALTER TABLE {s}.invoices DROP COLUMN currency; "
                f"DELETE FROM {s}.mtm_migrations WHERE name = '0011_invoice_currency'; COMMIT;"
            )
        subprocess.run(
            [self.psql, "-q", "-X", "-v", "ON_ERROR_STOP=1", self.dsn],
            input="\n".join(lines).encode(),
            check=True,
            stdout=subprocess.DEVNULL,
        )


# --- the mtm side -----------------------------------------------------------------------


def make_project(folder: Path, url: str, workload: Path) -> Path:
    """An mtm project with the workload's public and tenant migrations."""
    for ns in ("public", "tenant"):
        target = folder / "migrations" / ns
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted((workload / ns).glob("*.sql")):
            shutil.copy(f, target / f.name)
    mtm_url = make_url(libpq(url)).set(drivername="postgresql+psycopg")
    (folder / "mtm.toml").write_text(
        f"database_url = {json.dumps(mtm_url.render_as_string(hide_password=False))}\n",
        encoding="utf-8",
    )
    return folder / "mtm.toml"


def add_fleet_migration(project: Path, workload: Path) -> None:
    """fleet/0011 as a tenant migration, with a down so the benchmark can run it again."""
    for f in sorted((workload / "fleet").glob("*.sql")):
        text = f.read_text(encoding="utf-8").rstrip("\n") + "\n" + FLEET_DOWN
        (project / "migrations" / "tenant" / f.name).write_text(text, encoding="utf-8")


@dataclass
class Child:
    seconds: float
    max_rss_mb: float
    stdout: str
    returncode: int


def run_child(cmd: list[str], cwd: Path) -> Child:
    """Run one process to its end; its wall time and its own peak RSS (from wait4)."""
    env = {k: v for k, v in os.environ.items() if k != "MTM_DATABASE_URL"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Child(seconds, usage.ru_maxrss / 1024, out, proc.returncode)


def mtm_command() -> list[str]:
    """The installed ``mtm`` script beside this interpreter, else ``python -m mtm``."""
    script = Path(sys.executable).with_name("mtm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mtm"]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def tenant_name(i: int) -> str:
    return f"{TENANT_PREFIX}{i:05d}"


# --- the run ----------------------------------------------------------------------------


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def phase(self, name: str, mtm: float | None, raw: float | None, **extra: Any) -> None:
        row: dict[str, Any] = {"phase": name, "mtm_seconds": mtm, "raw_seconds": raw}
        row["ratio"] = round(mtm / raw, 3) if mtm is not None and raw else None
        row.update(extra)
        self.phases.append(row)
        shown = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        raw_shown = f"{raw:.2f}s" if raw is not None else "-"
        mtm_shown = f"{mtm:.3f}s" if mtm is not None else "-"
        log(f"{name}: mtm {mtm_shown} raw {raw_shown} ratio {shown}")

    def target(self, name: str, value: float, limit: float, unit: str) -> None:
        self.targets.append(
            {
                "target": name,
                "value": round(value, 3),
                "limit": limit,
                "unit": unit,
                "met": value <= limit if name != "fleet_best_vs_raw_jobs1" else value < limit,
            }
        )


def run(args: argparse.Namespace) -> Results:
    import mtm
    from mtm import Config

    res = Results()
    workload: Path = args.workload
    jobs_list = [int(j) for j in args.jobs_list.split(",") if j.strip()]
    tag = uuid.uuid4().hex[:8]
    with server(args.dsn) as url, tempfile.TemporaryDirectory(prefix="mtm-bench-") as tmp:
        res.meta = {
            "tenants": args.tenants,
            "noop_tenants": args.noop_tenants,
            "jobs_list": jobs_list,
            "server_version": server_version(url),
            "python": platform.python_version(),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "workload": str(workload),
        }
        with (
            database(url, f"mtm_bench_raw_{tag}") as raw_url,
            database(url, f"mtm_bench_mtm_{tag}") as mtm_url,
            ExitStack() as stack,
        ):
            raw = Raw(args.raw_baseline, raw_url, args.tenants, args.psql)
            project = Path(tmp) / "app"
            config_path = make_project(project, mtm_url, workload)
            config = Config.load(config_path, env={})
            n = args.tenants

            # -- create at head ------------------------------------------------------------
            mtm.migrate(config)  # the public migrations, once (not part of any tenant's create)
            if "create" in args.phases:
                # In chunks, the two sides taking turns, so that a slow spell of the machine
                # (other processes' I/O) hits both alike. mtm's chunks add up to the fleet;
                # the floor's chunks each go to a database of their own (its schema names
                # always start at bench_t00000), made beforehand: dropping schemas between
                # chunks would leave vacuum work that lands on the other side's turn.
                chunks = max(min(args.create_chunks, n), 1)
                bounds = [n * k // chunks for k in range(chunks + 1)]
                raw_creates: list[float] = []
                mtm_creates: list[float] = []
                chunk_dbs = [
                    stack.enter_context(database(url, f"mtm_bench_raw_{tag}_{k}"))
                    for k in range(chunks)
                ]
                settle(url)
                log(f"create at head, {n} tenants in {chunks} chunks, raw and mtm taking turns")
                for k in range(chunks):
                    size = bounds[k + 1] - bounds[k]
                    for side in ("raw", "mtm") if k % 2 == 0 else ("mtm", "raw"):
                        if side == "raw":
                            chunk_raw = Raw(args.raw_baseline, chunk_dbs[k], size, args.psql)
                            raw_creates.append(chunk_raw.run("--one-tx", "--phase", "create"))
                            continue
                        t0 = time.perf_counter()
                        with mtm.connect(config) as db:  # creates in a row share one backend
                            for i in range(bounds[k], bounds[k + 1]):
                                db.create(tenant_name(i))
                        mtm_creates.append(time.perf_counter() - t0)
                stack.close()  # the chunks' databases
                log(f"the floor's {n} tenants for the fleet phases (not timed)")
                raw.run("--one-tx", "--phase", "create")
                mtm_create, raw_create = sum(mtm_creates), sum(raw_creates)
                res.phase(
                    "create at head",
                    round(mtm_create, 3),
                    round(raw_create, 3),
                    per_tenant_ms=round(1000 * mtm_create / n, 2),
                    raw_per_tenant_ms=round(1000 * raw_create / n, 2),
                    mtm_chunks=[round(x, 3) for x in mtm_creates],
                    raw_chunks=[round(x, 3) for x in raw_creates],
                )
            else:
                log(f"{n} tenants on both sides, not timed (--phases without create)")
                raw.run("--one-tx", "--phase", "create")
                with mtm.connect(config) as db:
                    for i in range(n):
                        db.create(tenant_name(i))
            settle(raw_url, vacuum=True)
            settle(mtm_url, vacuum=True)

            # -- the fleet migration -------------------------------------------------------
            add_fleet_migration(project, workload)
            fleet: dict[int, tuple[float, float]] = {}
            for j in jobs_list:
                log(f"fleet migration, {n} tenants, jobs {j}, {args.fleet_repeat} runs each")
                mtm_runs, raw_runs = fleet_runs(
                    config, raw, n, j, args.fleet_repeat, before=lambda: settle(url)
                )
                mtm_s, raw_s = statistics.median(mtm_runs), statistics.median(raw_runs)
                fleet[j] = (mtm_s, raw_s)
                res.phase(
                    f"fleet 0011, jobs {j}",
                    round(mtm_s, 3),
                    round(raw_s, 3),
                    jobs=j,
                    per_tenant_ms=round(1000 * mtm_s / n, 3),
                    mtm_runs=[round(x, 3) for x in mtm_runs],
                    raw_runs=[round(x, 3) for x in raw_runs],
                )
            mtm.migrate(config, jobs=max(jobs_list))  # leave the fleet at head

            if "noop" in args.phases:
                # -- 10k tenants: no-op migrate, status, memory --------------------------------
                extra = max(args.noop_tenants - n, 0)
                if extra:
                    # Not timed: commits need not wait for the disk while the fleet is built.
                    log(f"creating {extra} more tenants at head (db.create on 3 threads)")
                    database_name = make_url(mtm_url).database
                    with psycopg.connect(libpq(mtm_url), autocommit=True) as conn:
                        conn.execute(
                            f'ALTER DATABASE "{database_name}" SET synchronous_commit = off'
                        )
                    # Opened after the setting, so its connections pick it up; one backend
                    # per thread, each kept for that thread's creates.
                    with mtm.connect(config) as db, ThreadPoolExecutor(3) as pool:
                        for _ in pool.map(lambda i: db.create(tenant_name(i)), range(n, n + extra)):
                            pass
                    with psycopg.connect(libpq(mtm_url), autocommit=True) as conn:
                        conn.execute(f'ALTER DATABASE "{database_name}" RESET synchronous_commit')
                total = n + extra
                settle(mtm_url, vacuum=True)
                cmd = mtm_command()
                noop_runs = [run_child([*cmd, "migrate"], project) for _ in range(args.repeat)]
                for child in noop_runs:
                    if child.returncode != 0 or "nothing to do" not in child.stdout:
                        sys.exit(f"no-op migrate did not answer 'nothing to do':\n{child.stdout}")
                status_runs = [run_child([*cmd, "status"], project) for _ in range(args.repeat)]
                for child in status_runs:
                    if child.returncode != 0 or f"{total:,} at head" not in child.stdout:
                        sys.exit(f"status did not find every tenant at head:\n{child.stdout}")
                noop_s = statistics.median(c.seconds for c in noop_runs)
                status_s = statistics.median(c.seconds for c in status_runs)
                rss = max(c.max_rss_mb for c in [*noop_runs, *status_runs])
                res.phase(
                    f"no-op migrate, {total:,} tenants (CLI)",
                    round(noop_s, 3),
                    None,
                    runs=[round(c.seconds, 3) for c in noop_runs],
                    max_rss_mb=round(max(c.max_rss_mb for c in noop_runs), 1),
                )
                res.phase(
                    f"status, {total:,} tenants (CLI)",
                    round(status_s, 3),
                    None,
                    runs=[round(c.seconds, 3) for c in status_runs],
                    max_rss_mb=round(max(c.max_rss_mb for c in status_runs), 1),
                )
                baseline = run_child([*cmd, "--version"], project)
                res.meta["cli_startup_seconds"] = round(baseline.seconds, 3)

            fleet_targets(res, fleet)
            if "create" in args.phases:
                res.target("create_ratio", mtm_create / raw_create, 1.2, "x raw one-tx create")
            if "noop" in args.phases:
                res.target("noop_migrate_seconds", noop_s, 1.0, f"s at {total:,} tenants")
                res.target("status_seconds", status_s, 1.0, f"s at {total:,} tenants")
                res.target("peak_rss_mb", rss, 200.0, f"MB at {total:,} tenants")
    return res


def fleet_targets(res: Results, fleet: dict[int, tuple[float, float]]) -> None:
    """The fleet targets, each against the floor's jobs 1 (or its fewest jobs measured):
    mtm at jobs 1 (one connection, pipelined), mtm at the default jobs, the best jobs."""
    raw1 = fleet[1][1] if 1 in fleet else fleet[min(fleet)][1]
    if 1 in fleet:
        res.target(
            "fleet_jobs1_ratio", fleet[1][0] / raw1, TARGETS["fleet_jobs1_ratio"], "x raw jobs 1"
        )
    if DEFAULT_JOBS in fleet:
        res.target(
            "fleet_default_jobs_ratio",
            fleet[DEFAULT_JOBS][0] / raw1,
            TARGETS["fleet_default_jobs_ratio"],
            f"x raw jobs 1 (mtm at jobs {DEFAULT_JOBS})",
        )
    best = min(fleet.values())[0]
    res.target("fleet_best_vs_raw_jobs1", best / raw1, 1.0, "x raw jobs 1")


def render(res: Results) -> str:
    lines = [
        f"mtm fleet benchmark: {res.meta['tenants']:,} tenants "
        f"(no-op/status at {max(res.meta['tenants'], res.meta['noop_tenants']):,}), "
        f"PostgreSQL {res.meta['server_version']}, {res.meta['machine']}",
        "",
        f"{'phase':<36} {'mtm':>10} {'raw floor':>10} {'ratio':>7}",
    ]
    for p in res.phases:
        mtm_s = f"{p['mtm_seconds']:.2f}s" if p["mtm_seconds"] is not None else "-"
        raw_s = f"{p['raw_seconds']:.2f}s" if p["raw_seconds"] is not None else "-"
        ratio = f"{p['ratio']:.2f}x" if p["ratio"] is not None else "-"
        rss = f"  peak RSS {p['max_rss_mb']:.0f} MB" if "max_rss_mb" in p else ""
        lines.append(f"{p['phase']:<36} {mtm_s:>10} {raw_s:>10} {ratio:>7}{rss}")
    lines += ["", f"{'target':<28} {'value':>9} {'limit':>7}  unit"]
    for t in res.targets:
        mark = "met" if t["met"] else "not met"
        lines.append(f"{t['target']:<28} {t['value']:>9.3f} {t['limit']:>7g}  {t['unit']}  {mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dsn", help="a PostgreSQL URL (default: start an embedded server)")
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--noop-tenants", type=int, default=10000)
    ap.add_argument("--jobs-list", default="1,2,4,8")
    ap.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="which of create, fleet, noop to time (without create its tenants are built untimed)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of each CLI phase (median)")
    ap.add_argument(
        "--create-chunks", type=int, default=10, help="turns each side takes in the create phase"
    )
    ap.add_argument(
        "--fleet-repeat", type=int, default=3, help="runs of each fleet phase, both sides (median)"
    )
    ap.add_argument("--raw-baseline", type=Path, default=DEFAULT_RAW)
    ap.add_argument("--workload", type=Path, help="default: workload/ beside raw_baseline.py")
    ap.add_argument("--psql", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fleet.json")
    args = ap.parse_args(argv)
    args.raw_baseline = args.raw_baseline.resolve()
    if not args.raw_baseline.exists():
        ap.error(f"{args.raw_baseline} not found (pass --raw-baseline)")
    args.workload = (args.workload or args.raw_baseline.parent / "workload").resolve()
    if not (args.workload / "tenant").is_dir():
        ap.error(f"{args.workload} has no tenant/ folder (pass --workload)")
    args.psql = args.psql or find_psql()
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not args.phases <= set(PHASES) or "fleet" not in args.phases:
        ap.error(f"--phases: fleet and any of {', '.join(PHASES)}")
    res = run(args)
    print(render(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"meta": res.meta, "phases": res.phases, "targets": res.targets}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
