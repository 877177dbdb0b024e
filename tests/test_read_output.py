"""The JSON of the read commands: one document, a tenant a line, and no drawing library
loaded to print it (start-up is most of what these commands cost)."""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys

import pytest

from conftest import Project
from mtm.jsonout import dump_json
from test_apps_roles import rproject  # noqa: F401  (a fixture)


def test_dump_json_is_one_document_with_an_item_a_line() -> None:
    data = {
        "public": {"schema": "public", "pending": []},
        "tenants": [
            {"schema": "acme", "created": datetime.datetime(2026, 1, 2, 3, 4, 5)},
            {"schema": "globex", "name": 'Glöbex, "Inc"\n'},
        ],
        "summary": {"tenants": 2, "empty": {}},
    }
    out = io.StringIO()
    dump_json(data, out)
    assert json.loads(out.getvalue()) == json.loads(json.dumps(data, default=str))
    lines = out.getvalue().splitlines()
    assert '    {"schema": "acme", "created": "2026-01-02 03:04:05"},' in lines
    assert lines[0] == "{" and lines[-1] == "}"
    for value in ([], {}, None, "x", [1], {"a": [{"b": [1, 2]}]}):
        out = io.StringIO()
        dump_json(value, out)
        assert json.loads(out.getvalue()) == value


def _fleet(project: Project) -> None:
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    for schema in ("acme", "globex"):
        assert project.cli("create", schema, "--domain", f"{schema}.example.com").exit_code == 0


def test_json_listings_have_a_tenant_a_line(project: Project) -> None:
    _fleet(project)
    status = project.cli("status", "--json").output
    lines = [line.strip().rstrip(",") for line in status.splitlines() if line.startswith("    {")]
    assert [json.loads(line) for line in lines] == json.loads(status)["tenants"]
    assert len(lines) == 2
    tenants = project.cli("tenants", "--json").output
    rows = [json.loads(line.strip().rstrip(",")) for line in tenants.splitlines()[1:-1]]
    assert [r["schema"] for r in rows] == ["acme", "globex"]
    assert rows[0]["domains"] == ["acme.example.com"]
    assert rows == json.loads(tenants)


@pytest.mark.parametrize(
    "argv", [["status", "--json"], ["tenants", "--json"], ["validate", "--json"]]
)
def test_json_forms_import_no_drawing_library(project: Project, argv: list[str]) -> None:
    _fleet(project)
    code = (
        "import sys\nfrom mtm.cli import cli\n"
        f"try:\n    cli({argv!r}, prog_name='mtm')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=project.root, capture_output=True, text=True, check=True
    )
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


def test_tenants_shows_only_the_roles_mtm_marked_for_them(rproject: Project) -> None:  # noqa: F811
    """Found by their marks: a role named like a tenant's but unmarked, one marked for
    another database, and a marked role of another name are not the tenant's role."""
    p = rproject
    prefix = p.config.tenant_role_prefix
    for schema in ("acme", "globex", "initech", "hooli"):
        assert p.cli("create", schema).exit_code == 0
    assert p.cli("role", "add", "acme").exit_code == 0
    p.query(f"CREATE ROLE {prefix}globex")  # by hand, no mark
    p.query(f"CREATE ROLE {prefix}initech")
    p.query(
        f"COMMENT ON ROLE {prefix}initech IS 'mtm tenant role: database elsewhere schema initech'"
    )
    database = p.scalar("SELECT current_database()")
    p.query(f"CREATE ROLE {prefix}other")
    p.query(f"COMMENT ON ROLE {prefix}other IS 'mtm tenant role: database {database} schema hooli'")
    rows = json.loads(p.cli("tenants", "--json").output)
    assert {r["schema"]: r["role"] for r in rows} == {
        "acme": f"{prefix}acme",
        "globex": None,
        "hooli": None,
        "initech": None,
    }
    rows = json.loads(p.cli("tenants", "--json", "--match", "a*").output)
    assert [(r["schema"], r["role"], r["applied"]) for r in rows] == [("acme", f"{prefix}acme", 1)]
