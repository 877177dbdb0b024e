"""The host -> tenant resolver: right answers, and no query in the steady state."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import mtm
from conftest import Project


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(project: Project) -> Project:
    assert project.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    assert project.cli("create", "globex", "--domain", "globex.example.com").exit_code == 0
    return project


COUNTS: dict[int, int] = {}  # statements sent, per engine


@pytest.fixture
def engine(registry: Project) -> Iterator[Engine]:
    eng = mtm.create_app_engine(registry.url, pool_size=2)
    COUNTS[id(eng)] = 0

    @sa.event.listens_for(eng, "before_cursor_execute")
    def _count(*_: Any) -> None:
        COUNTS[id(eng)] += 1

    try:
        yield eng
    finally:
        eng.dispose()


def statements(engine: Engine) -> int:
    return COUNTS[id(engine)]


def test_resolves_normalised_hosts_and_then_costs_no_query(engine: Engine) -> None:
    resolver = mtm.TenantResolver(engine)
    tenant = resolver.resolve("ACME.example.com:8443")
    assert tenant is not None and tenant.schema == "acme"
    assert tenant.domains == ("acme.example.com",)
    before = statements(engine)
    for host in ("acme.example.com", "Acme.Example.COM.", "acme.example.com:80"):
        found = resolver.resolve(host)
        assert found is not None and found.schema == "acme"
    assert statements(engine) == before
    assert resolver.cache.hits >= 3
    assert resolver.resolve("globex.example.com").schema == "globex"  # type: ignore[union-attr]
    assert resolver.resolve("") is None and resolver.resolve(None) is None


def test_unknown_hosts_are_cached_for_the_shorter_ttl(engine: Engine) -> None:
    clock = Clock()
    cache = mtm.TenantCache(ttl=60, negative_ttl=5, clock=clock)
    resolver = mtm.TenantResolver(engine, cache=cache)
    assert resolver.resolve("nobody.example.com") is None
    queries = resolver.queries
    for _ in range(100):
        assert resolver.resolve("NOBODY.example.com") is None
    assert resolver.queries == queries
    clock.now += 6
    assert resolver.resolve("nobody.example.com") is None
    assert resolver.queries == queries + 1


def test_entries_expire_and_can_be_invalidated(registry: Project, engine: Engine) -> None:
    clock = Clock()
    resolver = mtm.TenantResolver(engine, cache=mtm.TenantCache(ttl=60, clock=clock))
    assert resolver.resolve("acme.example.com").schema == "acme"  # type: ignore[union-attr]
    assert resolver.resolve("new.example.com") is None
    registry.query(
        "INSERT INTO public.tenants_domains (domain, schema_name) "
        "VALUES ('new.example.com', 'acme')"
    )
    assert resolver.resolve("new.example.com") is None  # cached "unknown"
    resolver.invalidate("New.Example.com")
    assert resolver.resolve("new.example.com").schema == "acme"  # type: ignore[union-attr]

    registry.query("UPDATE public.tenants SET name = 'Acme Corp' WHERE schema_name = 'acme'")
    assert resolver.resolve("acme.example.com").name is None  # type: ignore[union-attr]
    resolver.invalidate(schema="acme")  # every host of the tenant
    assert len(resolver.cache) == 0
    assert resolver.resolve("acme.example.com").name == "Acme Corp"  # type: ignore[union-attr]

    assert resolver.resolve("new.example.com") is not None
    registry.query("DELETE FROM public.tenants_domains WHERE domain = 'new.example.com'")
    assert resolver.resolve("new.example.com") is not None  # cached for up to ttl
    clock.now += 61  # expired: asked again
    assert resolver.resolve("new.example.com") is None
    resolver.invalidate()
    assert len(resolver.cache) == 0


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = mtm.TenantCache(maxsize=2)
    a, b = mtm.Tenant("a", None, ()), mtm.Tenant("b", None, ())
    cache.put("a.test", a)
    cache.put("b.test", b)
    assert cache.get("a.test") is a  # a is now the most recent
    cache.put("c.test", None)
    assert len(cache) == 2
    assert cache.get("b.test") is mtm.resolver.MISSING
    assert cache.get("a.test") is a and cache.get("c.test") is None


def test_many_threads_share_one_resolver(engine: Engine) -> None:
    resolver = mtm.TenantResolver(engine)
    hosts = {"acme.example.com": "acme", "globex.example.com": "globex", "x.test": None}
    errors: list[str] = []

    def work() -> None:
        for i in range(300):
            host = list(hosts)[i % 3]
            tenant = resolver.resolve(host)
            if (tenant.schema if tenant else None) != hosts[host]:
                errors.append(host)

    start = threading.Barrier(8)

    def racer() -> None:
        start.wait()
        work()

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert resolver.queries == 3  # cold cache, 8 threads at once: one query per host


def test_async_resolver(registry: Project) -> None:
    async def main() -> None:
        engine = mtm.create_async_app_engine(registry.url, pool_size=1)
        try:
            resolver = mtm.AsyncTenantResolver(engine)
            found = await asyncio.gather(
                resolver.resolve("acme.example.com:443"),
                resolver.resolve("GLOBEX.example.com"),
                resolver.resolve("unknown.example.com"),
                *[resolver.resolve("Acme.example.com") for _ in range(10)],
            )
            assert [t.schema if t else None for t in found[:4]] == [
                "acme",
                "globex",
                None,
                "acme",
            ]
            queries = resolver.queries
            assert queries == 3  # the ten at once for acme waited for the first answer
            assert (await resolver.resolve("acme.example.com")).schema == "acme"  # type: ignore[union-attr]
            assert await resolver.resolve("unknown.example.com") is None
            assert resolver.queries == queries
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_mapper_table_still_works(engine: Engine) -> None:
    mapper = mtm.MapperTable(engine)
    assert mapper.lookup("Globex.example.com:8080").schema == "globex"  # type: ignore[union-attr]
    assert [t.schema for t in mapper.tenants()] == ["acme", "globex"]
