#!/usr/bin/env python3
"""``mtm diff`` against a plain SELECT of the same catalog rows, in the same run.

    python benchmarks/diff.py [--dsn URL] [--tenants-list 1000,10000] [--rounds 5]
                              [--workload DIR] [--out FILE]

Without ``--dsn`` it starts an embedded PostgreSQL in a temporary folder (and stops it
at the end). It makes one database, applies the workload's public migrations with
``mtm.migrate``, and creates tenants at head with mtm's own create script
(``steps.create``, 100 tenants per round trip: fast, and the same catalog as
``mtm create``). At each fleet size it times, in rounds whose two sides take turns
(the side that goes first alternates):

* ``mtm.diff(config)``: the whole command through the Python API (its connection,
  the plans, the throwaway reference built at the fleet's step and dropped, the
  fingerprints of every tenant's catalog in one query, the grouping);
* a plain ``SELECT`` of the catalog rows that fingerprint reads for the same schemas
  (relations, columns and defaults, constraints, indexes, sequences, functions,
  triggers, policies, types, enum labels), fetched whole, on a connection opened
  beforehand.

It prints the median of each side and their ratio (the target is <= 3x), and writes
the rounds as JSON (``benchmarks/results/diff.json`` unless ``--out``). The catalogs
are vacuumed and analysed after the tenants are created. Absolute times on shared
machines drift; the ratio, measured in the same run, is the result.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

import mtm
from mtm import steps
from mtm.config import Config
from mtm.database import join_script
from mtm.embedded import EmbeddedServer
from mtm.migrations import discover

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKLOAD = ROOT.parent / "shared" / "bench" / "workload"
TARGET = 3.0

# The catalog rows behind the fingerprint of the schemas in %(s)s, selected as they are.
PLAIN = """
WITH s AS (SELECT oid AS sid FROM pg_namespace WHERE nspname = ANY(%(s)s))
SELECT c.oid, c.relname::text, c.relkind::text, NULL::text, NULL::text
  FROM pg_class c JOIN s ON c.relnamespace = s.sid WHERE c.relkind <> 'i'
UNION ALL
SELECT a.attrelid, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull::text,
       ad.adbin::text
  FROM pg_class c JOIN s ON c.relnamespace = s.sid
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE c.relkind <> 'i'
UNION ALL
SELECT k.oid, k.conname::text, k.contype::text, k.conkey::text, k.conbin::text
  FROM pg_constraint k JOIN s ON k.connamespace = s.sid
UNION ALL
SELECT i.indexrelid, x.relname::text, i.indkey::text, i.indclass::text, i.indpred::text
  FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid JOIN s ON x.relnamespace = s.sid
UNION ALL
SELECT q.seqrelid, q.seqtypid::text, q.seqstart::text, q.seqincrement::text, q.seqmax::text
  FROM pg_sequence q JOIN pg_class c ON c.oid = q.seqrelid JOIN s ON c.relnamespace = s.sid
UNION ALL
SELECT p.oid, p.proname::text, p.prokind::text, p.proargtypes::text, p.prosrc
  FROM pg_proc p JOIN s ON p.pronamespace = s.sid
UNION ALL
SELECT g.oid, g.tgname::text, g.tgtype::text, g.tgfoid::text, g.tgqual::text
  FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid JOIN s ON c.relnamespace = s.sid
 WHERE NOT g.tgisinternal
UNION ALL
SELECT pol.oid, pol.polname::text, pol.polcmd::text, NULL, pol.polqual::text
  FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid JOIN s ON c.relnamespace = s.sid
UNION ALL
SELECT t.oid, t.typname::text, t.typtype::text, e.enumlabel::text, NULL
  FROM pg_type t JOIN s ON t.typnamespace = s.sid
  LEFT JOIN pg_enum e ON e.enumtypid = t.oid WHERE t.typtype IN ('e', 'd')
"""


def make_project(root: Path, url: str, workload: Path) -> Config:
    """A project folder whose migrations are the workload's public and tenant ones."""
    if not sorted((workload / "tenant").glob("*.sql")):
        raise SystemExit(f"no tenant migrations in {workload / 'tenant'}: pass --workload DIR")
    for namespace in ("public", "tenant"):
        folder = root / "migrations" / namespace
        folder.mkdir(parents=True)
        for source in sorted((workload / namespace).glob("*.sql")):
            (folder / source.name).write_text(source.read_text(encoding="utf-8"))
    (root / "mtm.toml").write_text(f'database_url = "{url}"\n', encoding="utf-8")
    return Config.load(root / "mtm.toml", env={})


def create_tenants(config: Config, libpq: str, names: list[str]) -> None:
    """Tenants at head through mtm's create script, 100 per round trip."""
    migrations = discover(config.migrations_directory).tenant
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for i in range(0, len(names), 100):
            script: list[str] = []
            for schema in names[i : i + 100]:
                body = [s for m in migrations for s in steps.create_body(config, schema, m)]
                script += steps.create(config, schema, None, []).around(body)
            conn.execute(join_script(script).encode(), prepare=False)
        conn.execute("VACUUM ANALYZE pg_catalog.pg_class")
        conn.execute("ANALYZE")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(config: Config, libpq: str, names: list[str], rounds: int) -> dict[str, Any]:
    """Rounds of diff and the plain SELECT taking turns; medians and their ratio."""
    diff_times: list[float] = []
    plain_times: list[float] = []
    rows = 0
    with psycopg.connect(libpq, autocommit=True) as conn:

        def plain() -> None:
            nonlocal rows
            rows = len(conn.execute(PLAIN, {"s": names}).fetchall())

        def diff() -> None:
            result = mtm.diff(config)
            assert result.ok and result.tenants_checked == len(names), result

        diff()  # warm both sides once, untimed
        plain()
        for r in range(rounds):
            sides = [(diff, diff_times), (plain, plain_times)]
            for fn, out in sides if r % 2 == 0 else reversed(sides):
                out.append(timed(fn))
    d, p = statistics.median(diff_times), statistics.median(plain_times)
    return {
        "tenants": len(names),
        "catalog_rows": rows,
        "diff_s": diff_times,
        "plain_s": plain_times,
        "diff_median_s": d,
        "plain_median_s": p,
        "ratio": d / p,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--tenants-list", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workload", type=Path, default=DEFAULT_WORKLOAD)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "diff.json")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.tenants_list.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="mtm-bench-diff-"))
    server = None
    url = args.dsn
    if url is None:
        server = EmbeddedServer(tmp / "pgdata")
        url = server.start()
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"mtm_bench_diff_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = make_url(url).set(database=name).render_as_string(hide_password=False)
    libpq = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    results = []
    try:
        config = make_project(tmp / "app", db_url, args.workload)
        assert mtm.migrate(config).ok
        names: list[str] = []
        for size in sizes:
            fresh = [f"acme{i:05d}" for i in range(len(names), size)]
            create_tenants(config, libpq, fresh)
            names += fresh
            results.append(measure(config, libpq, names, args.rounds))
            r = results[-1]
            print(
                f"{size:>6,} tenants ({r['catalog_rows']:,} catalog rows): "
                f"diff {r['diff_median_s']:.3f}s, plain SELECT {r['plain_median_s']:.3f}s, "
                f"ratio {r['ratio']:.2f}x (target <= {TARGET:g}x; median of {args.rounds})",
                flush=True,
            )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = {"python": platform.python_version(), "rounds": args.rounds, "results": results}
    args.out.write_text(json.dumps(info, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
