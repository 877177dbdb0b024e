"""A Citus cluster for tests: a coordinator and two workers on 127.0.0.1.

Three ordinary PostgreSQL 15 servers started with ``shared_preload_libraries = citus``
and ``wal_level = logical`` (online moves need it), in a folder of their own. Each
test database is copied on every node (at once) from a template that has the extension,
and the workers are added to it on the coordinator: a fresh cluster per test at the cost
of one database per node.

The Citus build for tests lives in ``../shared/citus`` beside the repository (its
``install.sh`` puts it into Debian's PostgreSQL 15). Where it is absent or not
installed, :func:`unavailable` says so and the Citus tests skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "citus"
TEMPLATE = "mtm_citus_template"
PGBIN = Path(os.environ.get("MTM_TEST_CITUS_PGBIN", "/usr/lib/postgresql/15/bin"))


def unavailable() -> str | None:
    """Why a Citus cluster cannot be started here, or None when it can."""
    if not (PGBIN / "postgres").exists():
        return f"Citus tests need PostgreSQL 15's server in {PGBIN} (Debian's postgresql-15)"
    pkglibdir = subprocess.run(
        [str(PGBIN / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if pkglibdir and (Path(pkglibdir) / "citus.so").exists():
        return None
    if not SHARED.exists():
        return f"Citus tests need the Citus build for tests in {SHARED}; it is absent"
    return f"Citus is not installed into PostgreSQL 15: run {SHARED / 'install.sh'} (as root)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(args: list[str]) -> list[str]:
    """initdb and postgres refuse root: run them as ``postgres`` when we are root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class Node:
    port: int
    data: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@dataclass
class CitusCluster:
    """A coordinator and ``workers`` workers, started by :meth:`start`."""

    workers: int = 2
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mtm-citus-")))
    nodes: list[Node] = field(default_factory=list)

    @property
    def coordinator(self) -> Node:
        return self.nodes[0]

    @property
    def worker_nodes(self) -> list[Node]:
        return self.nodes[1:]

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        for _ in range(1 + self.workers):
            node = Node(_free_port(), self.folder / f"node{len(self.nodes)}")
            subprocess.run(
                _as_owner(
                    [str(PGBIN / "initdb"), "-D", str(node.data), "-A", "trust", "-U", "postgres"]
                ),
                check=True,
                capture_output=True,
            )
            options = (
                f"-p {node.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
                "-c shared_preload_libraries=citus -c wal_level=logical "
                "-c max_connections=300 -c fsync=off -c synchronous_commit=off "
                "-c max_worker_processes=32"
            )
            self.nodes.append(node)
            log, start = f"{node.data}.log", ["-w", "-o", options, "start"]
            subprocess.run(
                _as_owner([str(PGBIN / "pg_ctl"), "-D", str(node.data), "-l", log, *start]),
                check=True,
                capture_output=True,
            )
        self._each_node(self._make_template)

    def _each_node(self, work: Callable[[Node], None]) -> None:
        """``work`` on every node at once (a database per node costs about a second each)."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(work, self.nodes))

    @staticmethod
    def _make_template(node: Node) -> None:
        """A template database with the extension: copying it is several times faster
        than CREATE EXTENSION citus in every test's database. Nothing may connect to a
        template while it is copied (Citus's maintenance daemon would), hence no
        connections once it is made."""
        with psycopg.connect(node.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
        with psycopg.connect(node.url(TEMPLATE), autocommit=True) as conn:
            conn.execute("SET client_min_messages TO warning")
            conn.execute("CREATE EXTENSION citus")
        with psycopg.connect(node.url(), autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{TEMPLATE}" IS_TEMPLATE true ALLOW_CONNECTIONS false')

    def stop(self) -> None:
        for node in self.nodes:
            subprocess.run(
                _as_owner([str(PGBIN / "pg_ctl"), "-D", str(node.data), "-m", "immediate", "stop"]),
                capture_output=True,
                check=False,
            )
        if not os.environ.get("MTM_TEST_CITUS_KEEP"):  # its servers' logs, to look at
            shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self, name: str | None = None) -> str:
        """A database on every node, with Citus and the workers added; its coordinator URL."""
        name = name or f"mtm_citus_{uuid.uuid4().hex[:12]}"

        def create(node: Node) -> None:
            with psycopg.connect(node.url(), autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')

        self._each_node(create)
        with psycopg.connect(self.coordinator.url(name), autocommit=True) as conn:
            conn.execute("SET client_min_messages TO warning")
            conn.execute(
                "SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,)
            )
            for worker in self.worker_nodes:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))
        return self.coordinator.url(name)

    def drop_database(self, name: str) -> None:
        def drop(node: Node) -> None:
            with psycopg.connect(node.url(), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        self._each_node(drop)
