"""No secrets in output: passwords in database URLs are masked in every message."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL

from conftest import Project, make_project
from mtm.config import mask_url
from mtm.failures import describe_error

SECRET = "s3cr3t-Pa55word"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unreachable(tmp_path: Path, url: str | None = None) -> Project:
    url = url or f"postgresql://app:{SECRET}@127.0.0.1:{_free_port()}/app"
    project = make_project(tmp_path / "app", url)
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    return project


def test_unreachable_database_never_shows_the_password(tmp_path: Path) -> None:
    project = _unreachable(tmp_path)
    for args in (
        ["migrate"],
        ["migrate", "--json"],
        ["status", "--json"],
        ["validate"],
        ["create", "acme", "--domain", "acme.example.com"],
        ["tenants"],
        ["history", "--tenant", "acme"],
        ["down", "--all-tenants"],
        ["drop", "acme", "--yes"],
    ):
        r = project.cli(*args)
        assert r.exit_code == 4, (args, r.output)
        assert SECRET not in r.output, args
        assert "cannot connect to postgresql+psycopg://app:***@127.0.0.1:" in r.output, args


def test_unreachable_database_in_a_real_process_and_from_the_environment(
    tmp_path: Path,
) -> None:
    project = _unreachable(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    url = f"postgresql://app:{SECRET}@127.0.0.1:{_free_port()}/app"
    r = project.run("migrate", "--json", env={"MTM_DATABASE_URL": url})
    assert r.returncode == 4
    assert SECRET not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "app:***@127.0.0.1" in r.stderr


def test_password_in_the_query_string_is_masked_too(tmp_path: Path) -> None:
    project = _unreachable(tmp_path, f"postgresql://app@127.0.0.1:{_free_port()}/app")
    (project.root / "mtm.toml").write_text(
        f'database_url = "postgresql://app@127.0.0.1:{_free_port()}/app?password={SECRET}"\n'
    )
    for args in (["migrate"], ["db", "status"]):
        r = project.cli(*args)
        assert SECRET not in r.output, (args, r.output)
        assert "password=***" in r.output


def test_db_status_masks_and_db_url_prints_the_url_for_psql(tmp_path: Path) -> None:
    project = _unreachable(tmp_path)
    r = project.cli("db", "status")
    assert r.exit_code == 0
    assert SECRET not in r.output and "app:***@127.0.0.1" in r.output
    # `mtm db url` exists to be pasted into psql: it prints the URL as configured.
    r = project.cli("db", "url")
    assert r.exit_code == 0 and SECRET in r.output


def test_config_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    project = _unreachable(tmp_path)
    for text in (
        f'db_user = "app"\ndb_password = ["{SECRET}"]\n',
        f'database_url = ["postgresql://app:{SECRET}@db/app"]\n',
        f'database_url = "mysql://app:{SECRET}@db/app"\n',
        f'database_url = "postgresql://app:{SECRET}@db:port/app"\n',
        f'database_url = "postgresql://app:{SECRET}@db/app"\ndb_password = "{SECRET}"\n',
        f'database_url = "postgresql://app:{SECRET}@db/app"\njobs = 0\n',
    ):
        (project.root / "mtm.toml").write_text(text)
        r = project.cli("status")
        assert r.exit_code != 0, text
        assert SECRET not in r.output, (text, r.output)
        assert "error:" in r.output


def test_migration_errors_are_masked_in_text_and_json(project: Project) -> None:
    project.write(
        "tenant",
        "0001_remote.sql",
        f"DO $$ BEGIN RAISE EXCEPTION 'cannot reach postgresql://etl:{SECRET}@warehouse/x'; "
        "END $$;",
    )
    project.write(
        "public",
        "0001_py.py",
        f"""
        def up(op):
            raise RuntimeError("dsn postgresql://etl:{SECRET}@warehouse/x refused")
        """,
    )
    r = project.cli("migrate", "--json")
    assert r.exit_code == 1
    failure = json.loads(r.stdout)["failures"][0]
    assert "step.failed" in r.stderr and SECRET not in r.stderr  # the ERROR record, masked
    assert failure["schema"] == "public" and SECRET not in failure["error"]
    assert "etl:***@warehouse" in failure["error"]
    (project.migrations / "public" / "0001_py.py").unlink()
    r = project.cli("create", "acme")
    assert r.exit_code == 1 and SECRET not in r.output and "etl:***@warehouse" in r.output
    assert project.cli("create", "acme", "--no-migrate").exit_code == 0
    r = project.cli("migrate")
    assert r.exit_code == 1
    assert SECRET not in r.output and "etl:***@warehouse" in r.output


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    password=st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=6, max_size=30
    )
)
def test_mask_url_hides_any_password(password: str) -> None:
    assume(password.strip() == password)
    url = URL.create(
        "postgresql", username="app", password=password, host="db.example", database="app"
    ).render_as_string(hide_password=False)
    shown = "postgresql://app:***@db.example/app"
    assume(password not in shown and password not in "cannot connect to : refused")
    assert password not in mask_url(url)
    assert mask_url(url) == shown
    message = f"cannot connect to {url}: refused"
    assert password not in mask_url(message)
    assert password not in describe_error(RuntimeError(message))


def test_mask_url_on_raw_text() -> None:
    for text in (
        f"postgresql://u:{SECRET}@h/db",
        f"postgresql://u:p@{SECRET}@h/db",  # an unencoded @ in the password
        f"cannot connect to postgres://u:{SECRET}@h:5432/db: timeout",
        f"host=h user=u password={SECRET} dbname=x",
        f"host=h user=u password='{SECRET} x' dbname=x",
        f"postgresql://u@h/db?sslmode=require&password={SECRET}",
    ):
        assert SECRET not in mask_url(text), text
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert mask_url("no url here") == "no url here"
