"""Ledgers read as COPY, many a round trip (``copyread``): the same rows and sums as the
server's own SQL, whatever the names hold; a failed COPY leaves the connection usable
and the batch is read the old way; a lost connection raises instead of hanging."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from conftest import Project, _libpq
from mtm import ledgerscan
from mtm.copyread import copy_rows
from mtm.database import APART, checkout, create_engine

ODD = [
    ("plain", "abc"),
    ("comma,colon:", "x,y:z"),
    ('quote" and \\ backslash', '"'),
    ("new\nline\tand tab", ""),
    ("carriage\r\nreturn", "\r"),
    ("naïve ☃", "\\N"),
    ("null checksum", None),
]


@pytest.fixture
def pg(project: Project) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(_libpq(project.url), autocommit=True) as conn:
        conn.execute("CREATE TABLE odd (name text PRIMARY KEY, checksum text)")
        conn.execute("CREATE TABLE empty (name text PRIMARY KEY, checksum text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO odd VALUES (%s, %s)", ODD)
        yield conn


def _copy(table: str) -> str:
    return f"COPY {table} (name, checksum) TO STDOUT (FORMAT csv)"


def test_rows_of_several_tables_in_one_round_trip(
    pg: psycopg.Connection[tuple[object, ...]],
) -> None:
    tables = copy_rows(pg, [_copy("odd"), _copy("empty"), _copy("odd")])
    expected = sorted([name, checksum or ""] for name, checksum in ODD)
    assert tables is not None
    assert [sorted(t) for t in tables] == [expected, [], expected]
    assert pg.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_failed_copy_returns_none_and_leaves_the_connection_ready(
    pg: psycopg.Connection[tuple[object, ...]],
) -> None:
    assert copy_rows(pg, [_copy("odd"), _copy("missing"), _copy("odd")]) is None
    assert pg.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert pg.execute("SELECT count(*) FROM odd").fetchone() == (len(ODD),)
    assert copy_rows(pg, [_copy("empty")]) == [[]]


def test_a_connection_in_a_transaction_or_a_pipeline_is_left_alone(
    pg: psycopg.Connection[tuple[object, ...]],
) -> None:
    with pg.transaction():
        pg.execute("SELECT 1")
        assert copy_rows(pg, [_copy("odd")]) is None
    with pg.pipeline():
        assert copy_rows(pg, [_copy("odd")]) is None
        assert pg.execute("SELECT count(*) FROM odd").fetchone() == (len(ODD),)
    assert copy_rows(pg, [_copy("empty")]) == [[]]


def test_a_lost_connection_raises(
    project: Project, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    with psycopg.connect(_libpq(project.url), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pg.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        copy_rows(pg, [_copy("odd")] * 50)


def test_the_sums_from_copied_rows_are_the_servers(project: Project) -> None:
    """Fingerprint, count and ambiguity worked out from the rows equal the SQL's, for
    odd names, a NULL checksum, an empty ledger, and a ledger COPY may refuse (a
    partitioned one: the batch is then read with the SQL)."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    for schema in ("acme", "globex", "initech", "umbrella"):
        assert project.cli("create", schema).exit_code == 0
    with psycopg.connect(_libpq(project.url), autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO acme.mtm_migrations (name, checksum) VALUES (%s, %s)", ODD)
        cur.execute("INSERT INTO umbrella.mtm_migrations (name, checksum) VALUES ('a,b', 'c')")
        cur.execute("DELETE FROM globex.mtm_migrations")
        # A partitioned ledger (by hand): COPY TO of a partitioned table fails
        # (PostgreSQL 15 to 18), so its batch is read with the SQL.
        cur.execute("ALTER TABLE initech.mtm_migrations RENAME TO old")
        cur.execute(
            "CREATE TABLE initech.mtm_migrations (LIKE initech.old INCLUDING DEFAULTS) "
            "PARTITION BY LIST (name)"
        )
        cur.execute("CREATE TABLE initech.rest PARTITION OF initech.mtm_migrations DEFAULT")
        cur.execute("INSERT INTO initech.mtm_migrations SELECT * FROM initech.old")
        cur.execute("DROP TABLE initech.old")
    config = project.config
    chunks = [["acme", "umbrella"], ["globex", "initech"]]
    engine = create_engine(config)
    try:
        with checkout(engine) as conn:
            copied, missed = ledgerscan._copied_sums(conn, config, chunks)
            assert missed == chunks[1:]  # COPY refuses the partitioned ledger's batch
            by_sql = ledgerscan._computed_sums(conn, config, chunks)
            conn.info[APART] = False
            mixed = ledgerscan.ledger_sums(
                lambda: checkout(engine), conn, config, [s for c in chunks for s in c]
            )
    finally:
        engine.dispose()
    assert copied == {s: by_sql[s] for s in chunks[0]}
    assert mixed == by_sql
    assert copied["acme"].rows == len(ODD) + 1 and copied["acme"].ambiguous
    assert copied["umbrella"].ambiguous  # a comma alone makes the text ambiguous too
    assert by_sql["globex"] == ledgerscan.NO_LEDGER


def test_an_interrupted_read_closes_the_connection(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of a reply: the connection, mid-protocol, is not handed back
    to the pool as if it were idle."""
    project.write("tenant", "0001_items.sql", "CREATE TABLE items (id int);")
    assert project.cli("create", "acme").exit_code == 0

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ledgerscan, "copy_rows", interrupted)
    engine = create_engine(project.config)
    try:
        with checkout(engine) as conn:
            with pytest.raises(KeyboardInterrupt):
                ledgerscan._copied_sums(conn, project.config, [["acme"]])
            assert conn.invalidated
    finally:
        engine.dispose()
