#!/usr/bin/env python3
"""Start-up and the read commands at a small and a large fleet, as real processes.

    python benchmarks/startup.py [--dsn URL] [--tenants 10000] [--small 10] [--rounds 5]
                                 [--before SRC]

Without ``--dsn`` it starts an embedded PostgreSQL in a temporary folder. It makes two
databases, one with ``--small`` tenants and one with ``--tenants`` tenants (built fast:
mtm's own create scripts, 100 tenants a round trip, not timed), then runs every command
once per round with the sides interleaved (small, large, start-up, ``import
sqlalchemy``, next command...) and reports medians. The machine may be shared: the
ratios of one run are the result, not absolute times. ``--before SRC`` (the ``src``
folder of another checkout, e.g. ``git archive main src | tar -x -C /tmp/main``) also
runs every read command of the large fleet with that mtm, right after this one, and
reports its targets too: a before/after under the same load.

Targets (issue "speed, round two"), with ``budget = start-up + import sqlalchemy``:

* ``--help`` / ``--version`` import neither SQLAlchemy nor psycopg (checked, not timed);
* no-op ``migrate`` at the large fleet <= 1.3x the same at the small fleet;
* ``status``, ``status --json``, ``tenants``, ``tenants --json``, ``migrate --dry-run``
  at the large fleet <= 1.5x budget; ``validate`` <= 4x budget.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

import mtm as mtm_package
from mtm import Config, steps
from mtm.database import join_script
from mtm.migrations import discover

MIGRATIONS = {
    "0001_customers.sql": "CREATE TABLE customers (id bigserial PRIMARY KEY, name text);",
    "0002_invoices.sql": "CREATE TABLE invoices (id bigserial PRIMARY KEY, "
    "customer_id bigint REFERENCES customers, total numeric);",
    "0003_index.sql": "CREATE INDEX invoices_customer_idx ON invoices (customer_id);",
}
READS = [
    ("status", ["status"]),
    ("status --json", ["status", "--json"]),
    ("tenants", ["tenants"]),
    ("tenants --json", ["tenants", "--json"]),
    ("migrate --dry-run", ["migrate", "--dry-run"]),
    ("validate", ["validate"]),
]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from mtm.embedded import EmbeddedServer

    folder = Path(tempfile.mkdtemp(prefix="mtm-startup-"))
    os.chmod(folder, 0o755)
    embedded = EmbeddedServer(folder / "pgdata")
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def fleet(url: str, tenants: int, folder: Path) -> Iterator[Path]:
    """A project folder whose database holds ``tenants`` tenants at head."""
    name = f"mtm_startup_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq(url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db_url = make_url(libpq(url)).set(database=name, drivername="postgresql+psycopg")
    rendered = db_url.render_as_string(hide_password=False)
    try:
        for ns in ("public", "tenant"):
            (folder / "migrations" / ns).mkdir(parents=True)
        (folder / "migrations" / "public" / "0001_plans.sql").write_text(
            "CREATE TABLE plans (id int PRIMARY KEY);\n"
        )
        for file, sql in MIGRATIONS.items():
            (folder / "migrations" / "tenant" / file).write_text(sql + "\n")
        (folder / "mtm.toml").write_text(f"database_url = {json.dumps(rendered)}\n")
        mtm(folder, "migrate")
        bulk_create(Config.load(str(folder / "mtm.toml")), 0, tenants)
        yield folder
    finally:
        with psycopg.connect(libpq(url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bulk_create(config: Config, start: int, stop: int) -> None:
    """Tenants ``t{start:06d}`` .. ``t{stop - 1:06d}`` at head, fast and untimed: mtm's
    own create scripts, 100 tenants a round trip, ``synchronous_commit`` off meanwhile;
    then ``VACUUM ANALYZE``. Not the create path a user runs (that is timed elsewhere)."""
    url = config.database_url or ""
    name = make_url(url).database
    migrations = discover(config.migrations_directory).tenant
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        for i in range(start, stop, 100):
            script: list[str] = []
            for n in range(i, min(i + 100, stop)):
                schema = f"t{n:06d}"
                body = [s for m in migrations for s in steps.create_body(config, schema, m)]
                script += steps.create(config, schema, None, []).around(body)
            conn.execute(join_script(script).encode(), prepare=False)
            if (i - start) % 10_000 == 0 and i > start:
                log(f"{i:,} tenants")
        conn.execute(f'ALTER DATABASE "{name}" RESET synchronous_commit')
        conn.execute("VACUUM ANALYZE")


def mtm_command() -> list[str]:
    script = Path(sys.executable).with_name("mtm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mtm"]


def mtm(folder: Path, *args: str, src: str | None = None) -> float:
    """Run one mtm process to its end (output discarded); its wall time (``src``: the
    mtm of that source folder instead of the installed one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTM_")}
    if src:
        env["PYTHONPATH"] = src
    t0 = time.perf_counter()
    done = subprocess.run(
        [*mtm_command(), *args], cwd=folder, env=env, stdout=subprocess.PIPE, check=False
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"mtm {' '.join(args)} failed ({done.returncode}) in {folder}")
    return seconds


def python(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def heavy_at_startup() -> list[str]:
    """Modules of SQLAlchemy or psycopg loaded by ``mtm --help`` and ``--version``."""
    code = (
        "import sys, contextlib\nfrom mtm.cli import cli\n"
        "for a in (['--help'], ['--version']):\n"
        "    with contextlib.suppress(SystemExit): cli(a, prog_name='mtm')\n"
        "print('loaded:', *(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'psycopg', 'alembic')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return out.strip().splitlines()[-1].split()[1:]


def report(args: argparse.Namespace, times: dict[str, list[float]]) -> None:
    """Medians, then each target with its ratio and met / NOT MET."""
    med = {k: statistics.median(v) for k, v in times.items()}
    budget = med["--version"] + med["import sqlalchemy"]
    print(f"PostgreSQL: {'embedded' if not args.dsn else 'given --dsn'}; medians of {args.rounds}")
    for key, value in med.items():
        print(f"  {key:<36} {value:7.3f} s")
    heavy = heavy_at_startup()
    rows: list[tuple[str, str, bool]] = [
        ("--help/--version import no SQLAlchemy/psycopg", " ".join(heavy) or "none", not heavy)
    ]
    ratio = med["migrate (large)"] / med["migrate (small)"]
    rows.append(
        (f"no-op migrate {args.tenants:,} vs {args.small}", f"{ratio:.2f}x <= 1.3x", ratio <= 1.3)
    )
    print(
        f"budget = start-up {med['--version']:.3f} s + import sqlalchemy "
        f"{med['import sqlalchemy']:.3f} s = {budget:.3f} s"
    )
    for side in ("", ", before") if args.before else ("",):
        for label, _ in READS:
            limit = 4.0 if label == "validate" else 1.5
            ratio = med[f"{label} (large{side})"] / budget
            rows.append(
                (
                    f"{label} at {args.tenants:,}{side}",
                    f"{ratio:.2f}x <= {limit}x budget",
                    ratio <= limit,
                )
            )
    for name, value, met in rows:
        print(f"  {name:<44} {value:<22} {'met' if met else 'NOT MET'}")


def run(args: argparse.Namespace) -> int:
    times: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        times.setdefault(key, []).append(seconds)

    # As an installed package would be: byte-compiled (PYTHONDONTWRITEBYTECODE may be set).
    compileall.compile_dir(Path(mtm_package.__file__).parent, quiet=1)
    if args.before:
        compileall.compile_dir(Path(args.before), quiet=1)
    with ExitStack() as stack:
        url = stack.enter_context(server(args.dsn))
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtm-startup-")))
        (base / "small").mkdir()
        (base / "large").mkdir()
        log(f"building {args.small} and {args.tenants} tenants")
        small = stack.enter_context(fleet(url, args.small, base / "small"))
        large = stack.enter_context(fleet(url, args.tenants, base / "large"))
        log(f"timing {args.rounds} rounds, sides interleaved")
        for r in range(args.rounds):
            add("--version", mtm(small, "--version"))
            add("--help", mtm(small, "--help"))
            add("import sqlalchemy", python("import sqlalchemy"))
            add("migrate (small)", mtm(small, "migrate"))
            add("migrate (large)", mtm(large, "migrate"))
            for label, argv in READS:
                add(f"{label} (small)", mtm(small, *argv))
                add(f"{label} (large)", mtm(large, *argv))
                if args.before:
                    add(f"{label} (large, before)", mtm(large, *argv, src=args.before))
            log(f"round {r + 1} done")
        report(args, times)  # before the (slow) drop of 10,000 schemas
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="A server to use instead of an embedded one.")
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", metavar="SRC", help="Also time this mtm source folder.")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
