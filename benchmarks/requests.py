#!/usr/bin/env python3
"""A one-query request through ``tenant_connection`` against the same request on a plain
pooled connection of the same engine kind.

    python benchmarks/requests.py [--dsn URL] [--requests 300] [--rounds 7] [--queuepool]
                                  [--out FILE]

Without ``--dsn`` it starts an embedded PostgreSQL in a temporary folder. It makes one
database with tenants ``acme`` and ``globex`` (a ``customers`` table each) and times,
in rounds whose sides take turns (the side that goes first rotates), ``--requests``
requests of each kind, sync (``create_app_engine``) and asyncio
(``create_async_app_engine``), each engine with a pool of 5:

* plain: ``engine.connect()``, ``SELECT count(*) FROM acme.customers``;
* tenant: ``tenant_connection(engine, "acme")``, ``SELECT count(*) FROM customers``;
* affine: the same with ``affine=True``;
* affine-mixed: ``affine=True`` alternating acme and globex (with the tenant pool each
  finds an idle connection bound to it; without it every request would re-bind);
* random-plain, random-tenant, random-affine: each request for one of 20 tenants
  (``t00`` .. ``t19``, the same seeded random order for each side), plain with the schema
  named, ``tenant_connection`` and ``affine=True``; their ratio is to random-plain. With
  five idle connections bound to five of the 20 tenants, about one affine request in
  four finds its tenant's connection; the others reset and re-bind in one round trip.

Before the rounds each engine opens its five connections at once, so that the pool has
five idle ones to choose from. It prints the median per request of each side and its
ratio (target <= 1.15x, met / not met) and writes the rounds as JSON
(``benchmarks/results/requests.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import mtm
from mtm.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.15
SIDES = (
    "plain",
    "tenant",
    "affine",
    "affine-mixed",
    "random-plain",
    "random-tenant",
    "random-affine",
)
BASE = {"random-tenant": "random-plain", "random-affine": "random-plain"}  # else plain
QUERY = sa.text("SELECT count(*) FROM customers")
PLAIN = sa.text("SELECT count(*) FROM acme.customers")
MANY = [f"t{n:02d}" for n in range(20)]
QUALIFIED = {schema: sa.text(f"SELECT count(*) FROM {schema}.customers") for schema in MANY}
POOL = 5


def tenants(n: int) -> list[str]:
    """The random order of the random-* sides: the same for each side and round."""
    return random.Random(15).choices(MANY, k=n)


def sync_sides(engine: sa.Engine, n: int) -> dict[str, Callable[[], None]]:
    def plain() -> None:
        for _ in range(n):
            with engine.connect() as conn:
                conn.execute(PLAIN).scalar()

    def tenant() -> None:
        for _ in range(n):
            with mtm.tenant_connection(engine, "acme") as conn:
                conn.execute(QUERY).scalar()

    def affine() -> None:
        for _ in range(n):
            with mtm.tenant_connection(engine, "acme", affine=True) as conn:
                conn.execute(QUERY).scalar()

    def mixed() -> None:
        for i in range(n):
            with mtm.tenant_connection(engine, ("acme", "globex")[i % 2], affine=True) as conn:
                conn.execute(QUERY).scalar()

    def random_plain() -> None:
        for schema in tenants(n):
            with engine.connect() as conn:
                conn.execute(QUALIFIED[schema]).scalar()

    def random_tenant(affine: bool) -> Callable[[], None]:
        def run() -> None:
            for schema in tenants(n):
                with mtm.tenant_connection(engine, schema, affine=affine) as conn:
                    conn.execute(QUERY).scalar()

        return run

    with ExitStack() as stack:  # five idle connections to choose from
        for _ in range(POOL):
            stack.enter_context(engine.connect())
    fns = (plain, tenant, affine, mixed, random_plain, random_tenant(False), random_tenant(True))
    return dict(zip(SIDES, fns, strict=True))


def async_sides(engine: Any, n: int, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    async def plain() -> None:
        for _ in range(n):
            async with engine.connect() as conn:
                (await conn.execute(PLAIN)).scalar()

    async def tenant() -> None:
        for _ in range(n):
            async with mtm.async_tenant_connection(engine, "acme") as conn:
                (await conn.execute(QUERY)).scalar()

    async def affine() -> None:
        for _ in range(n):
            async with mtm.async_tenant_connection(engine, "acme", affine=True) as conn:
                (await conn.execute(QUERY)).scalar()

    async def mixed() -> None:
        for i in range(n):
            schema = ("acme", "globex")[i % 2]
            async with mtm.async_tenant_connection(engine, schema, affine=True) as conn:
                (await conn.execute(QUERY)).scalar()

    async def random_plain() -> None:
        for schema in tenants(n):
            async with engine.connect() as conn:
                (await conn.execute(QUALIFIED[schema])).scalar()

    def random_tenant(affine: bool) -> Any:
        async def run() -> None:
            for schema in tenants(n):
                async with mtm.async_tenant_connection(engine, schema, affine=affine) as conn:
                    (await conn.execute(QUERY)).scalar()

        return run

    async def warm() -> None:  # five idle connections to choose from
        async with AsyncExitStack() as stack:
            for _ in range(POOL):
                await stack.enter_async_context(engine.connect())

    loop.run_until_complete(warm())
    fns = (plain, tenant, affine, mixed, random_plain, random_tenant(False), random_tenant(True))
    return {s: (lambda f=f: loop.run_until_complete(f())) for s, f in zip(SIDES, fns, strict=True)}


def measure(sides: dict[str, Callable[[], None]], n: int, rounds: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {s: [] for s in SIDES}
    for fn in sides.values():
        fn()  # warm every side once, untimed
    for r in range(rounds):
        order = SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]
        for side in order:
            start = time.perf_counter()
            sides[side]()
            times[side].append((time.perf_counter() - start) / n)
    medians = {s: statistics.median(t) for s, t in times.items()}
    return {"per_request_s": times, "median_s": medians}


def report(label: str, result: dict[str, Any]) -> None:
    med = result["median_s"]
    parts = [f"plain {med['plain'] * 1e3:.3f}ms"]
    for side in SIDES[1:]:
        if side == "random-plain":
            parts.append(f"{side} {med[side] * 1e3:.3f}ms")
            continue
        ratio = med[side] / med[BASE.get(side, "plain")]
        result.setdefault("ratio", {})[side] = ratio
        met = "met" if ratio <= TARGET else "not met"
        parts.append(f"{side} {med[side] * 1e3:.3f}ms {ratio:.2f}x ({met})")
    print(f"{label}: " + ", ".join(parts) + f"; target <= {TARGET:g}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--queuepool",
        action="store_true",
        help="SQLAlchemy's own QueuePool instead of mtm's tenant pool (for comparison)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/requests.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still drop the database
    server = None
    url = args.dsn
    if url is None:
        server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="mtm-bench-req-")) / "pgdata")
        url = server.start()
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"mtm_bench_req_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = make_url(url).set(database=name).render_as_string(hide_password=False)
    libpq = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    results: dict[str, Any] = {}
    try:
        with psycopg.connect(libpq, autocommit=True) as conn:
            for schema in ("acme", "globex", *MANY):
                conn.execute(f"CREATE SCHEMA {schema}")
                conn.execute(f"CREATE TABLE {schema}.customers (id int)")
        sync_pool = {"poolclass": sa.pool.QueuePool} if args.queuepool else {}
        engine = mtm.create_app_engine(db_url, pool_size=POOL, **sync_pool)
        results["sync"] = measure(sync_sides(engine, args.requests), args.requests, args.rounds)
        engine.dispose()
        report("sync", results["sync"])
        loop = asyncio.new_event_loop()
        async_pool = {"poolclass": sa.pool.AsyncAdaptedQueuePool} if args.queuepool else {}
        aengine = mtm.create_async_app_engine(db_url, pool_size=POOL, **async_pool)
        sides = async_sides(aengine, args.requests, loop)
        results["async"] = measure(sides, args.requests, args.rounds)
        loop.run_until_complete(aengine.dispose())
        loop.close()
        report("async", results["async"])
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "python": platform.python_version(),
        "requests": args.requests,
        "pool": "QueuePool" if args.queuepool else "TenantPool",
        "results": results,
    }
    args.out.write_text(json.dumps(info, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
