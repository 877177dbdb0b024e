"""The read commands connect without SQLAlchemy only where libpq reads the URL exactly
as SQLAlchemy's engine would: the same parameters reach psycopg either way, and any
URL the two could read differently goes through the engine, as every other command's."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from _reliability import spawn, wait_until
from conftest import Project, _libpq
from mtm import database
from mtm.config import Config, mask_url
from mtm.conninfo import libpq_params
from mtm.errors import DatabaseUnavailable
from mtm.exits import Exit

PLAIN = [
    "postgresql://app:hunter22@db.example.com:5433/app",
    "postgres://app@localhost/app",
    "postgresql+psycopg://app:s3cr3t@127.0.0.1/app_db",
    "postgresql://app:p%40ss%3Aw%2Fo%3Frd%23x@db/app",  # @ : / ? # encoded
    "postgresql://a%20b:pw~._-x@h:1/d",
    "postgresql://postgres@/postgres?host=/tmp/mtm-sock.x",
    "postgresql://postgres@/postgres?host=%2Ftmp%2Fsock&port=5544",
    "postgresql://app:pw12@h/d?sslmode=require&connect_timeout=30",
    "postgresql://h",
    "postgresql://h:6000",
]

NOT_PLAIN = [
    "postgresql://app:pa/ss@h/d",  # a / in the password: libpq ends the host there
    "postgresql://app:pa?ss@h/d",
    "postgresql://app:pa#ss@h/d",
    "postgresql://app:p@ss@h/d",
    "postgresql://a%40b:pw@h/d",  # refused, as the engine refuses it
    "postgresql://app:pa+ss@h/d?sslmode=require+x",  # + is a space to SQLAlchemy only
    "postgresql://app:p%C3%A9ss@h/d",  # not ASCII once decoded
    "postgresql://app@h/d?host=a&host=b",  # a repeated key
    "postgresql://app@h/d?options=-c%20work_mem%3D4MB",  # mtm adds its own options
    "postgresql://app@h/d?service=x",
    "postgresql://app@[::1]:5432/d",
    "postgresql://app@h:0/d",
    "postgresql://app@h/d%20x",
    "mysql://app@h/d",
    "postgresql+asyncpg://app@h/d",
    "host=h dbname=d",
]


class _Reached(Exception):
    pass


def _reached(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """Every connection attempt's parameters, as psycopg would hand them to libpq; the
    attempt then fails as an unreachable server does."""
    seen: list[dict[str, str]] = []

    def connect(conninfo: str = "", **kwargs: Any) -> Any:
        for own in ("autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"):
            kwargs.pop(own, None)  # psycopg's, not libpq's
        found = conninfo_to_dict(make_conninfo(conninfo, **kwargs))
        seen.append({k: str(v) for k, v in found.items()})
        raise psycopg.OperationalError("stopped here")

    monkeypatch.setattr(psycopg, "connect", connect)
    return seen


def _both_ways(url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], ...]:
    """The parameters of the read commands' connection and of an engine's."""
    seen = _reached(monkeypatch)
    config = Config(root=Path.cwd(), database_url=url)
    with pytest.raises(DatabaseUnavailable), database.direct(config):
        pass
    engine = database.create_engine(config)
    with pytest.raises(DatabaseUnavailable), database.checkout(engine):
        pass
    engine.dispose()
    assert len(seen) == 2, seen
    return seen[0], seen[1]


@pytest.mark.parametrize("url", PLAIN)
def test_a_plain_url_reaches_the_server_with_the_engines_parameters(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert libpq_params(url) is not None
    direct, engine = _both_ways(url, monkeypatch)
    assert direct == engine


@pytest.mark.parametrize("url", NOT_PLAIN)
def test_any_other_url_is_left_to_the_engine(url: str) -> None:
    assert libpq_params(url) is None


_UNRESERVED = st.sampled_from("abcXYZ019._~-")
_ENCODED = st.sampled_from(["%40", "%3A", "%2F", "%3F", "%23", "%25", "%20", "%2B", "%26"])
_PART = st.lists(st.one_of(_UNRESERVED, _ENCODED), min_size=1, max_size=12).map("".join)
_USER = _PART.filter(lambda user: "%40" not in user)  # an @ in it: refused either way


@settings(max_examples=150, deadline=None)
@given(user=_USER, password=_PART, db=st.from_regex(r"[a-z0-9_]{1,10}", fullmatch=True))
def test_encoded_users_and_passwords_reach_the_server_alike(
    user: str, password: str, db: str
) -> None:
    url = f"postgresql://{user}:{password}@db.example.com:5432/{db}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        direct, engine = _both_ways(url, monkeypatch)
    assert direct == engine


def test_the_message_of_an_unreachable_server_hides_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _reached(monkeypatch)
    config = Config(root=Path.cwd(), database_url="postgresql://app:hunter22@127.0.0.1:1/app")
    with pytest.raises(DatabaseUnavailable) as caught, database.direct(config):
        pass
    shown = mask_url(caught.value.message)
    assert shown == "cannot connect to postgresql+psycopg://app:***@127.0.0.1:1/app: stopped here"
    assert "hunter22" not in caught.value.message


_WHICH = (
    "import sys\n"
    "from mtm.cli import main\n"
    "sys.argv = ['mtm', *sys.argv[1:]]\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "print('sqlalchemy' in sys.modules, code, file=sys.stderr)\n"
)


def _status(project: Project, *args: str) -> tuple[str, str]:
    return _read(project, "status", *args)


def _read(project: Project, *args: str) -> tuple[str, str]:
    """A command's output, and whether it imported SQLAlchemy with its exit code."""
    r = subprocess.run(
        [sys.executable, "-c", _WHICH, *args],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r.stdout, r.stderr.strip().splitlines()[-1]


def test_status_reads_without_sqlalchemy_and_says_the_same(project: Project) -> None:
    """``mtm status`` (and ``--json``) in a real process: no SQLAlchemy import on a
    plain URL, and the same output as through the engine (a URL with options)."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0
    assert project.cli("create", "globex").exit_code == 0
    project.write("tenant", "0002_more.sql", "CREATE TABLE more (id int);")
    plain = project.url
    assert libpq_params(plain) is not None
    for args in ((), ("--json",)):
        out, last = _status(project, *args)
        assert last == "False 0", last
        sep = "&" if "?" in plain else "?"
        optioned = f"{plain}{sep}options=-c%20work_mem%3D4MB"
        (project.root / "mtm.toml").write_text(f'database_url = "{optioned}"\n')
        engine_out, engine_last = _status(project, *args)
        (project.root / "mtm.toml").write_text(f'database_url = "{plain}"\n')
        assert engine_last == "True 0", engine_last
        assert out == engine_out
        assert "globex" in out


def test_the_read_commands_import_no_sqlalchemy(project: Project) -> None:
    """Each read command of a plain URL, in a real process: exit 0, no SQLAlchemy."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    for args in (
        ("tenants",),
        ("tenants", "--json"),
        ("tenants", "--all"),
        ("history", "--tenant", "acme"),
        ("history", "--public"),
        ("validate",),
    ):
        out, last = _read(project, *args)
        assert last == "False 0", (args, last, out)
    assert "acme.example.com" in _read(project, "tenants", "--json")[0]


def test_status_on_a_plain_url_keeps_its_one_line_errors(project: Project) -> None:
    """A refusal during a read without SQLAlchemy is still one line and its exit code
    (a role without privileges: ``test_cli_conventions``)."""
    project.query("CREATE TABLE public.tenants (id int)")  # another tool's registry
    _, last = _status(project)
    assert last == "False 2", last
    r = project.run("status")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_ctrl_c_in_a_read_without_sqlalchemy(project: Project) -> None:
    """Interrupted while its query waits: exit 130, one line, and its session ends
    (the connection is closed with the reply still due, not rolled back)."""
    assert project.cli("create", "acme").exit_code == 0
    blocker = psycopg.connect(_libpq(project.url))
    blocker.execute("LOCK TABLE public.mtm_migrations_version IN ACCESS EXCLUSIVE MODE")
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mtm' "
        "AND wait_event_type = 'Lock' AND datname = current_database()"
    )
    run = spawn(project, "status")
    try:
        wait_until(lambda: project.scalar(waiting) == 1, message="status waiting on the lock")
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
        blocker.close()
    assert run.returncode == Exit.INTERRUPTED, out + err
    assert err.strip() == "interrupted", err
    gone = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mtm'"
    wait_until(lambda: project.scalar(gone + " AND datname = current_database()") == 0)
