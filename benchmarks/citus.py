#!/usr/bin/env python3
"""The Citus benchmark: mtm against the raw-psql floor, both through one cluster's coordinator.

    python benchmarks/citus.py [--tenants 300] [--jobs-list 1,4] [--create-chunks 4]
                               [--raw-baseline FILE] [--workload DIR]

It starts its own cluster (a coordinator and two workers on 127.0.0.1, the test
cluster of ``tests/_citus.py``; Citus must be installed into PostgreSQL 15) and stops
it at the end. The floor (``shared/bench/raw_baseline.py``) runs in databases where
``citus.enable_schema_based_sharding`` is on, so its ``CREATE SCHEMA`` makes the same
distributed schema mtm's ``distributed = true`` makes. Phases, as in ``fleet.py`` and
with its helpers (the two sides take turns, so that drift in the machine hits both):

* create at head: ``db.create`` per tenant against ``raw_baseline.py --one-tx``;
* the fleet migration (``fleet/0011``) with ``mtm.migrate(config, jobs=J)`` against
  ``raw_baseline.py --phase fleet --jobs J``, every tenant put back between runs;
* no-op ``mtm migrate`` and ``mtm status`` as command-line processes (no floor).

Prints the table with each phase's ratio to the floor and writes the same as JSON
(``benchmarks/results/citus.json`` unless ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from fleet import (  # noqa: E402
    DEFAULT_RAW,
    ROOT,
    Raw,
    Results,
    add_fleet_migration,
    find_psql,
    fleet_runs,
    log,
    make_project,
    mtm_command,
    run_child,
    tenant_name,
)

from _citus import CitusCluster, unavailable  # noqa: E402


def sharded(cluster: CitusCluster) -> str:
    """A database on the cluster where every CREATE SCHEMA makes a distributed schema."""
    url = cluster.create_database()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(cluster.coordinator.url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET citus.enable_schema_based_sharding TO on')
    return url


def distributed_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM citus_schemas").fetchone()
    return int(row[0]) if row else 0


def run(args: argparse.Namespace) -> Results:
    """Longer than most: the phases in order, each timed on both sides, as in fleet.py."""
    import mtm
    from mtm import Config

    res = Results()
    n = args.tenants
    jobs_list = [int(j) for j in args.jobs_list.split(",") if j.strip()]
    cluster = CitusCluster()
    log("starting a Citus cluster: a coordinator and two workers")
    cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mtm-bench-citus-") as tmp:
            mtm_url = cluster.create_database()
            raw_url = sharded(cluster)
            with psycopg.connect(mtm_url) as conn:
                citus = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'citus'"
                ).fetchone()
                version = conn.execute("SHOW server_version").fetchone()
            res.meta = {
                "tenants": n,
                "jobs_list": jobs_list,
                "cluster": "1 coordinator + 2 workers, one machine",
                "citus": citus[0] if citus else None,
                "server_version": version[0] if version else None,
                "python": platform.python_version(),
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            project = Path(tmp) / "app"
            config_path = make_project(project, mtm_url, args.workload)
            with config_path.open("a", encoding="utf-8") as f:
                f.write("distributed = true\n")
            config = Config.load(config_path, env={})
            mtm.migrate(config)

            chunks = max(min(args.create_chunks, n), 1)
            bounds = [n * k // chunks for k in range(chunks + 1)]
            chunk_dbs = [sharded(cluster) for _ in range(chunks)]
            mtm_creates: list[float] = []
            raw_creates: list[float] = []
            log(f"create at head, {n} tenants in {chunks} chunks, raw and mtm taking turns")
            for k in range(chunks):
                size = bounds[k + 1] - bounds[k]
                for side in ("raw", "mtm") if k % 2 == 0 else ("mtm", "raw"):
                    if side == "raw":
                        raw_chunk = Raw(args.raw_baseline, chunk_dbs[k], size, args.psql)
                        raw_creates.append(raw_chunk.run("--one-tx", "--phase", "create"))
                        continue
                    t0 = time.perf_counter()
                    with mtm.connect(config) as db:
                        for i in range(bounds[k], bounds[k + 1]):
                            db.create(tenant_name(i))
                    mtm_creates.append(time.perf_counter() - t0)
            for url in chunk_dbs:
                cluster.drop_database(url.rsplit("/", 1)[1])
            if distributed_count(mtm_url) != n:
                sys.exit("mtm's tenants are not all distributed schemas")
            mtm_create, raw_create = sum(mtm_creates), sum(raw_creates)
            res.phase(
                "create at head",
                round(mtm_create, 3),
                round(raw_create, 3),
                per_tenant_ms=round(1000 * mtm_create / n, 2),
                raw_per_tenant_ms=round(1000 * raw_create / n, 2),
            )

            log(f"the floor's {n} tenants for the fleet phase (not timed)")
            raw = Raw(args.raw_baseline, raw_url, n, args.psql)
            raw.run("--one-tx", "--phase", "create")
            if distributed_count(raw_url) != n:
                sys.exit("the floor's schemas are not all distributed schemas")
            add_fleet_migration(project, args.workload)
            for j in jobs_list:
                log(f"fleet migration, {n} tenants, jobs {j}, {args.fleet_repeat} runs each")
                mtm_runs, raw_runs = fleet_runs(config, raw, n, j, args.fleet_repeat)
                mtm_s, raw_s = statistics.median(mtm_runs), statistics.median(raw_runs)
                res.phase(f"fleet 0011, jobs {j}", round(mtm_s, 3), round(raw_s, 3), jobs=j)
            mtm.migrate(config, jobs=max(jobs_list))

            cmd = mtm_command()
            noop = [run_child([*cmd, "migrate"], project) for _ in range(args.repeat)]
            for child in noop:
                if child.returncode != 0 or "nothing to do" not in child.stdout:
                    sys.exit(f"no-op migrate did not answer 'nothing to do':\n{child.stdout}")
            status = [run_child([*cmd, "status"], project) for _ in range(args.repeat)]
            for child in status:
                if child.returncode != 0 or f"{n:,} at head" not in child.stdout:
                    sys.exit(f"status did not find every tenant at head:\n{child.stdout}")
            res.phase(
                f"no-op migrate, {n:,} tenants (CLI)",
                round(statistics.median(c.seconds for c in noop), 3),
                None,
            )
            res.phase(
                f"status, {n:,} tenants (CLI)",
                round(statistics.median(c.seconds for c in status), 3),
                None,
            )
    finally:
        cluster.stop()
    return res


def render(res: Results) -> str:
    meta = res.meta
    lines = [
        f"mtm on a Citus cluster: {meta['tenants']:,} tenants, Citus {meta['citus']}, "
        f"PostgreSQL {meta['server_version']}, {meta['cluster']}, {meta['machine']}",
        "",
        f"{'phase':<36} {'mtm':>10} {'raw floor':>10} {'ratio':>7}",
    ]
    for p in res.phases:
        mtm_s = f"{p['mtm_seconds']:.2f}s"
        raw_s = f"{p['raw_seconds']:.2f}s" if p["raw_seconds"] is not None else "-"
        ratio = f"{p['ratio']:.2f}x" if p["ratio"] is not None else "-"
        lines.append(f"{p['phase']:<36} {mtm_s:>10} {raw_s:>10} {ratio:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tenants", type=int, default=300)
    ap.add_argument("--jobs-list", default="1,4", help="4: the default of the jobs key")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each CLI phase (median)")
    ap.add_argument("--create-chunks", type=int, default=4)
    ap.add_argument("--fleet-repeat", type=int, default=1, help="runs of each fleet phase")
    ap.add_argument("--raw-baseline", type=Path, default=DEFAULT_RAW)
    ap.add_argument("--workload", type=Path, help="default: workload/ beside raw_baseline.py")
    ap.add_argument("--psql", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "citus.json")
    args = ap.parse_args(argv)
    reason = unavailable()
    if reason:
        ap.error(reason)
    args.raw_baseline = args.raw_baseline.resolve()
    if not args.raw_baseline.exists():
        ap.error(f"{args.raw_baseline} not found (pass --raw-baseline)")
    args.workload = (args.workload or args.raw_baseline.parent / "workload").resolve()
    args.psql = args.psql or find_psql()
    res = run(args)
    print(render(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"meta": res.meta, "phases": res.phases}
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
