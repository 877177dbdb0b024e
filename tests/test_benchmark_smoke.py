"""The fleet benchmark still runs: a tiny fleet against the test server (no timings
are asserted; the figures are for docs/performance.md, not for tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "fleet.py"
RAW = ROOT.parent / "shared" / "bench" / "raw_baseline.py"


@pytest.mark.skipif(not RAW.exists(), reason=f"no raw baseline at {RAW}")
@pytest.mark.skipif(
    shutil.which("psql") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/psql")),
    reason="the raw floor needs psql",
)
@pytest.mark.slow
def test_fleet_benchmark_runs(server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    args = ["--tenants", "5", "--noop-tenants", "20", "--jobs-list", "1,2"]
    args += ["--create-chunks", "2", "--fleet-repeat", "1", "--repeat", "1"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--dsn", server_url, "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "create at head" in run.stdout and "fleet 0011, jobs 2" in run.stdout
    data = json.loads(out.read_text())
    phases = {p["phase"]: p for p in data["phases"]}
    assert phases["fleet 0011, jobs 1"]["raw_seconds"] > 0
    assert phases["no-op migrate, 20 tenants (CLI)"]["max_rss_mb"] > 0
    assert {t["target"] for t in data["targets"]} >= {"create_ratio", "peak_rss_mb"}


HUNDRED_THOUSAND = ROOT / "benchmarks" / "hundred_thousand.py"


@pytest.mark.slow
@pytest.mark.timeout(900)  # two runs of ten mtm processes each; a busy machine is slow
def test_hundred_thousand_benchmark_runs_and_resumes(server_url: str, tmp_path: Path) -> None:
    # A tiny fleet kept, then completed by a second run reusing it (--skip-build), its
    # first tenant made untimed by create scripts (--untimed), which drops both
    # databases at its end (validate, run on the fleet, fails on a tenant not at head).
    prefix = f"mtm_100k_smoke_{uuid.uuid4().hex[:8]}"
    common = [sys.executable, str(HUNDRED_THOUSAND), "--dsn", server_url, "--prefix", prefix]
    common += ["--block", "4", "--small", "2", "--rounds", "1"]
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    for extra, out in (
        (["--tenants", "9", "--keep"], first),
        (["--tenants", "14", "--skip-build", "--untimed", "10"], second),
    ):
        run = subprocess.run(
            [*common, *extra, "--out", str(out)], capture_output=True, text=True, timeout=420
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "migrate at" in run.stdout and "peak RSS MB, validate (large)" in run.stdout
    built, resumed = json.loads(first.read_text()), json.loads(second.read_text())
    assert built["meta"]["built_from"] == 0 and len(built["create_blocks_seconds"]) == 3
    assert resumed["meta"]["built_from"] == 10 and len(resumed["create_blocks_seconds"]) == 1
    for res in (built, resumed):
        assert res["create_control"]["tenants"] in (1, 4)
        assert res["commands"]["status (large)"]["max_rss_mb"] > 0
        targets = {t["target"] for t in res["targets"]}
        assert "create per tenant, last block vs a fresh database's" in targets
    assert "create per tenant, last 1 vs first 4" in {t["target"] for t in built["targets"]}
    libpq = make_url(server_url).set(drivername="postgresql")
    with psycopg.connect(libpq.render_as_string(hide_password=False)) as conn:
        query = "SELECT datname FROM pg_database WHERE datname LIKE %s"
        assert conn.execute(query, (f"{prefix}%",)).fetchall() == []
