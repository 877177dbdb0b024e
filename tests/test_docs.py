"""Every fenced code block in README.md and docs/*.md runs as written.

The bash and python blocks of one file run in order in one temporary project against
the test database (``MTM_DATABASE_URL`` and ``DATABASE_URL`` name it), as a reader
would type them: a ``cd`` in one bash block holds for the next. A block right after a
line ``<!-- no-test ... -->`` is exempt (the comment says why); tested blocks hold no
placeholders.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, Project, make_project

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"bash": "bash", "sh": "bash", "python": "python"}
PLACEHOLDERS = [re.compile(p) for p in (r"\.\.\.", r"\{\.\.\.\}", r"@db\b", r"//db\b")]


@dataclass
class Block:
    file: Path
    line: int
    language: str
    code: str
    exempt: bool


def blocks(path: Path) -> list[Block]:
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"\s*```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        start = i
        i += 1
        body = []
        while not lines[i].strip().startswith("```"):
            body.append(lines[i][indent:])
            i += 1
        before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        exempt = before.strip().startswith("<!-- no-test")
        out.append(Block(path, start + 1, fence.group(1), "\n".join(body) + "\n", exempt))
        i += 1
    return out


def test_blocks_are_runnable_or_exempt_and_hold_no_placeholders() -> None:
    found = [b for path in DOCS for b in blocks(path)]
    assert len(found) > 15
    for b in found:
        where = f"{b.file.name}:{b.line}"
        if b.exempt:
            continue
        assert b.language in RUNNABLE, f"{where}: a tested block must be bash or python"
        for pattern in PLACEHOLDERS:
            assert not pattern.search(b.code), f"{where}: placeholder {pattern.pattern}"
    exempt = [b for b in found if b.exempt]
    assert len(exempt) <= 6, [f"{b.file.name}:{b.line}" for b in exempt]


APPLICATIONS_SETUP = """
mtm create acme --domain acme.example.com
mtm create globex --domain globex.example.com
"""

CUSTOMERS = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL);
INSERT INTO customers (name, email) VALUES ('Wile E.', 'wile@acme.test');
-- mtm:down
DROP TABLE customers;
"""


TESTED = [p for p in DOCS if any(not b.exempt for b in blocks(p))]


def test_the_readme_and_the_applications_guide_are_tested() -> None:
    assert {p.name for p in TESTED} >= {"README.md", "applications.md"}


@pytest.mark.parametrize("path", TESTED, ids=lambda p: p.name)
def test_doc_blocks_run_as_written(tmp_path: Path, database_url: str, path: Path) -> None:
    todo = [b for b in blocks(path) if not b.exempt and b.language in RUNNABLE]
    prefix = f"mtm_doc_{uuid.uuid4().hex[:6]}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTM_")}
    env.update(
        MTM_DATABASE_URL=database_url,
        DATABASE_URL=database_url,
        MTM_TENANT_ROLE_PREFIX=prefix,  # roles are server-wide: keep this run's apart
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    cwd = tmp_path / "work"
    cwd.mkdir()
    if path.name != "README.md":  # the other docs start from a project with tenants
        project = make_project(cwd, database_url)
        project.write("tenant", "0001_customers.sql", CUSTOMERS)
        _run_bash(APPLICATIONS_SETUP, cwd, env, tmp_path)
    try:
        for b in todo:
            if RUNNABLE[b.language] == "bash":
                cwd = _run_bash(b.code, cwd, env, tmp_path, f"{path.name}:{b.line}")
            else:
                r = subprocess.run(
                    [sys.executable, "-c", b.code],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert r.returncode == 0, f"{path.name}:{b.line}\n{r.stdout}{r.stderr}"
    finally:
        _drop_roles(database_url, prefix)


def _run_bash(code: str, cwd: Path, env: dict[str, str], tmp: Path, where: str = "") -> Path:
    """Run a bash block; return the folder it ended in."""
    marker = tmp / "cwd"
    script = f"set -euo pipefail\n{code}\npwd > {marker}\n"
    r = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"{where}\n{r.stdout}{r.stderr}"
    return Path(marker.read_text().strip())


def _drop_roles(database_url: str, prefix: str) -> None:
    project = Project(Path("."), database_url)
    for (name,) in project.query(
        "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
    ):
        project.query(f'DROP OWNED BY "{name}"')
        project.query(f'DROP ROLE "{name}"')
