"""Connections and sessions bound to a tenant: they never leak to the next pool user."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import mtm
from conftest import Project
from mtm.errors import InvalidName
from mtm.session import app_url


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"  # no schema: search_path decides which tenant's table

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str]


@pytest.fixture
def two_tenants(project: Project) -> Project:
    project.write(
        "tenant", "0001_items.sql", "CREATE TABLE items (id serial PRIMARY KEY, label text);"
    )
    for t in ("alpha", "beta"):
        assert project.cli("create", t).exit_code == 0
        project.query(f"INSERT INTO {t}.items (label) VALUES ('{t} row')")
    return project


@pytest.fixture
def engine(two_tenants: Project) -> Iterator[Engine]:
    eng = mtm.create_app_engine(two_tenants.url, pool_size=1, max_overflow=0)
    try:
        yield eng
    finally:
        eng.dispose()


DEFAULT_PATH = '"$user", public'


def _state(engine: Engine) -> tuple[int, str, str, str]:
    """(backend pid, search_path, current_user, transaction state) of the pooled connection."""
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        status = dbapi.info.transaction_status.name  # type: ignore[union-attr]
        pid, path, user = conn.execute(
            sa.text("SELECT pg_backend_pid(), current_setting('search_path'), current_user")
        ).one()
        return pid, path, user, status


def _labels(conn: sa.Connection) -> list[str]:
    return list(conn.execute(sa.text("SELECT label FROM items ORDER BY id")).scalars())


def test_each_tenant_sees_its_own_rows_and_nothing_leaks(engine: Engine) -> None:
    pid, path, user, _ = _state(engine)
    assert path == DEFAULT_PATH
    with mtm.tenant_connection(engine, "alpha") as conn:
        assert _labels(conn) == ["alpha row"]
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() == pid
    assert _state(engine)[:3] == (pid, DEFAULT_PATH, user)
    with mtm.tenant_connection(engine, "beta") as conn:
        assert _labels(conn) == ["beta row"]
    with engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="items"):
        conn.execute(sa.text("SELECT * FROM items"))  # nothing bound: public has no items


def test_an_error_mid_transaction_rolls_back_and_resets(engine: Engine) -> None:
    pid = _state(engine)[0]
    with pytest.raises(sa.exc.DataError):
        with mtm.tenant_connection(engine, "alpha") as conn:
            conn.execute(sa.text("INSERT INTO items (label) VALUES ('lost')"))
            conn.execute(sa.text("SELECT 1 / 0"))
    assert _state(engine) == (pid, DEFAULT_PATH, _state(engine)[2], "IDLE")
    with mtm.tenant_connection(engine, "alpha") as conn:
        assert _labels(conn) == ["alpha row"]


def test_a_python_error_with_an_open_transaction_resets(engine: Engine) -> None:
    with pytest.raises(KeyError):
        with mtm.tenant_connection(engine, "beta") as conn:
            conn.execute(sa.text("INSERT INTO items (label) VALUES ('lost')"))
            raise KeyError("boom")
    assert _state(engine)[1:] == (DEFAULT_PATH, _state(engine)[2], "IDLE")
    with mtm.tenant_connection(engine, "beta") as conn:
        assert _labels(conn) == ["beta row"]


def test_binding_survives_commit_and_rollback_inside_the_block(engine: Engine) -> None:
    with mtm.tenant_connection(engine, "alpha") as conn:
        conn.execute(sa.text("INSERT INTO items (label) VALUES ('kept')"))
        conn.commit()
        # still alpha after the commit (a SET LOCAL would have ended with it)
        assert _labels(conn) == ["alpha row", "kept"]
        conn.execute(sa.text("INSERT INTO items (label) VALUES ('undone')"))
        conn.rollback()
        assert _labels(conn) == ["alpha row", "kept"]
        conn.execute(sa.text("INSERT INTO items (label) VALUES ('not committed')"))
    assert _state(engine)[1] == DEFAULT_PATH
    with mtm.tenant_connection(engine, "beta") as conn:
        assert _labels(conn) == ["beta row"]
    with mtm.tenant_connection(engine, "alpha") as conn:
        assert _labels(conn) == ["alpha row", "kept"]


def test_user_settings_are_reset_too(engine: Engine) -> None:
    with mtm.tenant_connection(engine, "alpha") as conn:
        conn.execute(sa.text("SET search_path TO beta"))
        conn.commit()
    assert _state(engine)[1] == DEFAULT_PATH


def test_orm_session(engine: Engine) -> None:
    with mtm.tenant_session(engine, "alpha") as session:
        session.add(Item(label="orm"))
        session.commit()
        assert [i.label for i in session.scalars(sa.select(Item).order_by(Item.id))] == [
            "alpha row",
            "orm",
        ]
    with mtm.tenant_session(engine, "beta") as session:
        session.add(Item(label="never committed"))
        session.flush()
    with mtm.tenant_session(engine, "beta") as session:
        assert session.scalars(sa.select(Item.label)).all() == ["beta row"]
    assert _state(engine)[1:] == (DEFAULT_PATH, _state(engine)[2], "IDLE")


def test_names_are_validated_before_any_sql(engine: Engine) -> None:
    for bad in ('alpha"; DROP SCHEMA beta CASCADE; --', "Alpha", "public", ""):
        with pytest.raises(InvalidName), mtm.tenant_connection(engine, bad):
            pass
    with mtm.tenant_connection(engine, "beta") as conn:
        assert _labels(conn) == ["beta row"]


def test_async_connection_and_session(two_tenants: Project) -> None:
    async def main() -> None:
        engine = mtm.create_async_app_engine(two_tenants.url, pool_size=1, max_overflow=0)
        try:
            async with mtm.async_tenant_connection(engine, "alpha") as conn:
                rows = (await conn.execute(sa.text("SELECT label FROM items"))).scalars()
                assert list(rows) == ["alpha row"]
                await conn.execute(sa.text("INSERT INTO items (label) VALUES ('async')"))
                await conn.commit()
            with pytest.raises(sa.exc.DataError):
                async with mtm.async_tenant_connection(engine, "beta") as conn:
                    await conn.execute(sa.text("INSERT INTO items (label) VALUES ('lost')"))
                    await conn.execute(sa.text("SELECT 1 / 0"))
            async with engine.connect() as conn:
                path = (await conn.execute(sa.text("SHOW search_path"))).scalar()
                assert path == DEFAULT_PATH
            async with mtm.async_tenant_session(engine, "beta") as session:
                labels = (await session.scalars(sa.select(Item.label).order_by(Item.id))).all()
                assert labels == ["beta row"]
                session.add(Item(label="async orm"))
                await session.commit()
            async with mtm.async_tenant_session(engine, "alpha") as session:
                labels = (await session.scalars(sa.select(Item.label).order_by(Item.id))).all()
                assert labels == ["alpha row", "async"]
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert two_tenants.scalar("SELECT count(*) FROM beta.items WHERE label = 'async orm'") == 1


def test_app_url_accepts_socket_and_legacy_urls() -> None:
    url = app_url("postgresql://postgres@/app?host=/run/postgresql")
    assert url.drivername == "postgresql+psycopg"
    assert url.query["host"] == "/run/postgresql"
    assert app_url("postgres://u:p@db:5433/app").drivername == "postgresql+psycopg"


def test_bind_an_existing_connection(engine: Engine) -> None:
    with engine.connect() as conn:
        with mtm.bind_connection(conn, "beta"):
            assert _labels(conn) == ["beta row"]
        assert conn.execute(sa.text("SHOW search_path")).scalar() == DEFAULT_PATH
        with pytest.raises(RuntimeError, match="before beginning a transaction"):
            with mtm.bind_connection(conn, "alpha"):
                pass
