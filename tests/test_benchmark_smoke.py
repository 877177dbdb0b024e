"""The fleet benchmark still runs: a tiny fleet against the test server (no timings
are asserted; the figures are for docs/performance.md, not for tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
