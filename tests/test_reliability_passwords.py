"""Passwords full of URL syntax (@ : / % space ? # quotes) never show up, even in part.

Each password is tried in a URL percent-encoded and as typed, through every command as
a real ``python -m mtm`` process, plain and ``--json``: against a port where nothing
listens, against the real server with a wrong password (when the test server takes
passwords over TCP), and with the right password of a real role made for the test.
"""

from __future__ import annotations

import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, quote_plus

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from conftest import Project, _libpq, make_project
from mtm.config import mask_url, sqlalchemy_url
from mtm.errors import ConfigError
from mtm.exits import Exit

# Every token of 3+ characters between the special characters is unique, so a
# fragment of a password in any output is found by looking for its tokens.
NASTY = [
    "Qx7@Zk9:Wv3/Rr5%",  # p@ss:w/rd%
    "Jm4@Hy8/Tt2",  # p@ss/w
    "Lp6 Nq1@Bd5",  # pa ss@word: libpq used to print "Bd5@127.0.0.1"
    "Fg3%40Kc8%zz",  # looks percent-encoded already
    "Uv2?Ws7#Xe4&Yr1=Zt6+",  # query and fragment syntax
    "Ab9'Cd3\"Ef5\\Gh7;",  # quotes, a backslash
    "Ïø8€Üñ5 ßaa",  # not ASCII
]

COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("migrate",),
    ("migrate", "--json"),
    ("create", "acme", "--domain", "acme.example.com"),
    ("tenants",),
    ("tenants", "--json"),
    ("validate",),
    ("validate", "--json"),
    ("history", "--tenant", "acme"),
    ("history", "--tenant", "acme", "--json"),
    ("down", "--all-tenants"),
    ("drop", "acme", "--yes"),
    ("db", "status"),
]


def _tokens(password: str) -> list[str]:
    return [t for t in re.split(r"[\W_]+", password) if len(t) >= 3]


def _url(user: str, password: str, host: str, port: int, database: str, *, encode: bool) -> str:
    shown = quote(password, safe="") if encode else password
    return f"postgresql://{user}:{shown}@{host}:{port}/{database}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_all(
    project: Project, commands: list[tuple[str, ...]]
) -> list[tuple[tuple[str, ...], subprocess.CompletedProcess[str]]]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda args: project.run(*args), commands))
    return list(zip(commands, results, strict=True))


def _assert_hidden(password: str, args: tuple[str, ...], out: str) -> None:
    for token in _tokens(password):
        assert token not in out, (password, args, out)
    assert "Traceback" not in out, (args, out)


def _refusing_urls(server_url: str) -> list[tuple[str, str]]:
    """(situation, url template) where the database cannot be used."""
    urls = [("unreachable", f"127.0.0.1:{_free_port()}/app")]
    server = make_url(server_url)
    if server.host and server.password:  # a TCP server that checks passwords
        urls.append(("wrong password", f"{server.host}:{server.port or 5432}/{server.database}"))
    return urls


@pytest.mark.parametrize("password", NASTY)
def test_a_nasty_password_is_never_shown_when_the_database_refuses(
    tmp_path: Path, server_url: str, password: str
) -> None:
    """Every command in-process; the commands that connect first also as real processes."""
    situations = _refusing_urls(server_url)
    for situation, where in situations:
        host_port, database = where.split("/")
        host, port = host_port.rsplit(":", 1)
        for encode in (True, False):
            url = _url("app", password, host, int(port), database, encode=encode)
            folder = tmp_path / f"{situation}-{encode}".replace(" ", "_")
            project = make_project(folder, "x")
            (project.root / "mtm.toml").write_text(f"database_url = {_toml(url)}\n")
            project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
            for args in COMMANDS:
                r = project.cli(*args)
                _check_refusal(password, args, r.exit_code, r.output)
            if (situation, where) == situations[-1]:
                for args, p in _run_all(project, [("migrate", "--json"), ("status",)]):
                    _check_refusal(password, args, p.returncode, p.stdout + p.stderr)


def _check_refusal(password: str, args: tuple[str, ...], code: int, out: str) -> None:
    _assert_hidden(password, args, out)
    if args == ("db", "status") and code == 0:
        assert "app:***@" in out, out
        return
    assert code in (Exit.USAGE, Exit.UNREACHABLE), (code, args, out)  # config; connect
    assert out.strip().startswith("error: "), (args, out)
    assert len(out.strip().splitlines()) == 1, (args, out)


def _toml(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_an_unencoded_at_sign_is_refused_saying_how_to_write_it(tmp_path: Path) -> None:
    for password in ("p@ss:w/rd%", "p@ss/w", "pa ss@word"):
        url = f"postgresql://app:{password}@127.0.0.1:5432/db"
        with pytest.raises(ConfigError) as caught:
            sqlalchemy_url(url)
        message = caught.value.message
        assert message == (
            "database_url: cannot tell where the password ends in "
            "'postgresql://app:***@127.0.0.1:5432/db': percent-encode @ as %40 in the user "
            "name and password (and : as %3A, / as %2F, % as %25, space as %20), or use the "
            "db_* keys"
        )


def test_masking_from_the_parsed_url_covers_libpq_text() -> None:
    secret = "Kw9 Zt4@Bb7"
    sqlalchemy_url(f"postgresql://app:{quote(secret, safe='')}@db/app")
    # libpq's own text holds no URL syntax to go by: it is the remembered password
    # (in every spelling) that is masked.
    for text in (
        f'connection to server at "{secret}@127.0.0.1" failed',
        f"password {quote(secret, safe='')} refused",
        f"password {quote_plus(secret)} refused",
    ):
        assert "Kw9" not in mask_url(text) and "Bb7" not in mask_url(text), text


@pytest.fixture
def nasty_role(server_url: str, database_url: str) -> Iterator[tuple[str, str]]:
    """A real login role whose password is every nasty password at once, able to use
    the test database; dropped afterwards with everything it owns there."""
    role = f"mtm_pw_{uuid.uuid4().hex[:10]}"
    password = "Qx7@Zk9:Wv3/Rr5% Lp6?Uv2#Ws7&Ab9'Cd3\"Ef5\\Ïø8"
    name = make_url(database_url).database
    with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        admin.execute(
            sql.SQL("GRANT CREATE, CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(name), sql.Identifier(role)
            )
        )
    with psycopg.connect(_libpq(database_url), autocommit=True) as db:
        db.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role)))
    try:
        yield role, password
    finally:
        with psycopg.connect(_libpq(database_url), autocommit=True) as db:
            db.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        with psycopg.connect(_libpq(server_url), autocommit=True) as admin:
            admin.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                    sql.Identifier(name), sql.Identifier(role)
                )
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_right_nasty_password_works_and_is_never_shown(
    tmp_path: Path, database_url: str, nasty_role: tuple[str, str]
) -> None:
    role, password = nasty_role
    base = make_url(database_url)
    encoded = (
        base.set(username=role, password="PASSWORD")
        .render_as_string(hide_password=False)
        .replace("PASSWORD", quote(password, safe=""))
    )
    assert password not in encoded  # the URL holds it percent-encoded
    parts = {"db_user": role, "db_password": password, "db_name": base.database}
    if base.host:
        parts["db_host"] = base.host
    keys = "".join(f"{k} = {_toml(str(v))}\n" for k, v in parts.items())
    if base.port:
        keys += f"db_port = {base.port}\n"
    for label, config in (("url", f"database_url = {_toml(encoded)}\n"), ("keys", keys)):
        if "host" in base.query:  # the embedded server: a Unix socket in the query
            if label == "keys":
                continue
        project = make_project(tmp_path / label, "x")
        (project.root / "mtm.toml").write_text(config)
        project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
        project.write("tenant", "0002_more.sql", "ALTER TABLE items ADD note text;\n-- mtm:down\n")
        steps: list[tuple[str, ...]] = [
            ("migrate", "--json"),
            ("create", "acme", "--domain", "acme.example.com"),
            ("migrate",),
            ("status",),
            ("status", "--json"),
            ("tenants",),
            ("tenants", "--json"),
            ("validate",),
            ("validate", "--json"),
            ("history", "--tenant", "acme"),
            ("history", "--tenant", "acme", "--json"),
            ("down", "--tenant", "acme", "--steps", "1"),
            ("drop", "acme", "--yes"),
            ("db", "status"),
        ]
        for args in steps:
            if label == "url":  # as real processes
                p = project.run(*args)
                code, out = p.returncode, p.stdout + p.stderr
            else:
                r = project.cli(*args)
                code, out = r.exit_code, r.output
            assert code == 0, (label, args, out)
            _assert_hidden(password, args, out)
        # `db url` exists to be pasted into psql: the URL as configured, on stdout only.
        r = project.run("db", "url")
        assert r.returncode == 0 and r.stderr == ""
        if label == "url":
            assert r.stdout.strip() == encoded
        shown = r.stdout.strip().replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(shown, autocommit=True) as conn:  # as psql reads it
            assert conn.execute("SELECT current_user").fetchone() == (role,)
