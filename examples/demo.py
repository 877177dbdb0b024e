"""The five-minute demo: a project on the embedded PostgreSQL, three tenants, one status.

Run by ``make demo``. It starts afresh each time: the demo/ folder (and its embedded
database) is removed and made again, so running it twice shows the same thing.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
MTM = [sys.executable, "-m", "mtm"]


def mtm(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    print(f"\n$ mtm {shlex.join(args)}", flush=True)
    return subprocess.run([*MTM, *args], cwd=DEMO, check=check)


def stop_previous() -> None:
    if (DEMO / "mtm.toml").exists():
        subprocess.run([*MTM, "db", "stop"], cwd=DEMO, check=False, capture_output=True)


def main() -> None:
    stop_previous()
    if "--stop" in sys.argv:
        return
    shutil.rmtree(DEMO, ignore_errors=True)
    subprocess.run([*MTM, "init", str(DEMO)], check=True)
    config = DEMO / "mtm.toml"
    config.write_text(
        config.read_text().replace(
            'migrations_directory = "migrations"',
            'migrations_directory = "../examples/migrations"',
        )
    )
    mtm("db", "url")
    mtm("create", "acme", "--domain", "acme.example.com", "--name", "Acme Corp")
    mtm("create", "globex", "--domain", "globex.example.com", "--domain", "www.globex.example")
    mtm("create", "initech", "--domain", "initech.example.com", "--no-migrate")
    mtm("migrate")
    mtm("status")
    print(f"\nThe embedded server keeps running; stop it with: cd {DEMO} && mtm db stop")


if __name__ == "__main__":
    main()
