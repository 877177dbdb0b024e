"""Find the tenant of a request from its host name, with an in-process cache.

``TenantResolver(engine)`` (sync) and ``AsyncTenantResolver(async_engine)`` (asyncio)
turn a Host header into the ``Tenant`` that owns it: the host is normalised (lower
case, no port, no trailing dot), looked up in the registry with one indexed query, and
the answer is cached, so in the steady state a request costs no query at all.

The cache is bounded (least recently used entries go first), entries expire after
``ttl`` seconds, and unknown hosts are cached too, for ``negative_ttl`` seconds, so a
flood of requests for a host nobody owns cannot hammer the database. It is safe to
share between threads (and between tasks), and when many requests for one host miss
the cache at once, one of them asks the database and the others wait for its answer.
After changing the registry in this process
call ``invalidate()``; other processes see the change within ``ttl``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from .config import Config
from .identifiers import normalize_host
from .registry import Tenant, by_domain_params, by_domain_query, tenant_from_row

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

MISSING: Any = object()  # a cache miss, as opposed to a cached "no tenant" (None)


class TenantCache:
    """A thread-safe LRU cache of host -> Tenant (or None) with per-entry expiry."""

    def __init__(
        self,
        maxsize: int = 10_000,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Tenant | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0  # moves on with every invalidate()
        self.hits = 0
        self.misses = 0

    @property
    def generation(self) -> int:
        """Read before asking the database; pass to ``put`` with the answer."""
        with self._lock:
            return self._generation

    def get(self, host: str, *, count: bool = True) -> Tenant | None:
        """The cached answer for a normalised host, or ``MISSING``."""
        with self._lock:
            entry = self._entries.get(host)
            if entry is not None:
                expires, tenant = entry
                if expires > self.clock():
                    self._entries.move_to_end(host)
                    self.hits += count
                    return tenant
                del self._entries[host]
            self.misses += count
            return MISSING  # type: ignore[no-any-return]

    def put(self, host: str, tenant: Tenant | None, generation: int | None = None) -> None:
        """Cache an answer, unless ``invalidate()`` ran since ``generation`` was read: an
        answer read before an invalidation may be the old one, and must not outlive it."""
        ttl = self.ttl if tenant is not None else self.negative_ttl
        if ttl <= 0:
            return
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            self._entries[host] = (self.clock() + ttl, tenant)
            self._entries.move_to_end(host)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def invalidate(self, host: str | None = None, *, schema: str | None = None) -> None:
        """Forget one host, every host of one tenant schema, or (no arguments) all.

        Lookups in flight at that moment return their answer but do not cache it.
        """
        with self._lock:
            self._generation += 1
            if host is None and schema is None:
                self._entries.clear()
                return
            if host is not None:
                self._entries.pop(normalize_host(host), None)
            if schema is not None:
                for key in [
                    k for k, (_, t) in self._entries.items() if t is not None and t.schema == schema
                ]:
                    del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class _Base:
    def __init__(
        self,
        config: Config | None,
        cache: TenantCache | None,
        maxsize: int,
        ttl: float,
        negative_ttl: float,
    ) -> None:
        self.config = config or Config()
        self.cache = cache if cache is not None else TenantCache(maxsize, ttl, negative_ttl)
        self._query = by_domain_query(self.config)
        self._lock = threading.Lock()
        self._inflight: dict[Any, list[Any]] = {}  # key -> [lock, users]
        self.queries = 0  # lookups that went to the database

    def _count_query(self) -> None:
        with self._lock:
            self.queries += 1

    def _enter(self, key: Any, make: Callable[[], Any]) -> Any:
        """The lock that lets one lookup per host go to the database (the others wait for
        its answer in the cache instead of all asking the database at once)."""
        with self._lock:
            entry = self._inflight.get(key)
            if entry is None:
                entry = self._inflight[key] = [make(), 0]
            entry[1] += 1
            return entry[0]

    def _leave(self, key: Any) -> None:
        with self._lock:
            entry = self._inflight[key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._inflight[key]

    def cached(self, host: str) -> Tenant | None:
        """The cached answer for a host (not normalised yet), or ``MISSING``; no query."""
        domain = normalize_host(host)
        if not domain:
            return None
        return self.cache.get(domain)

    def invalidate(self, host: str | None = None, *, schema: str | None = None) -> None:
        """Forget one host, every host of one tenant schema, or (no arguments) all."""
        self.cache.invalidate(host, schema=schema)


class TenantResolver(_Base):
    """Host -> Tenant over the registry, cached; ``resolve()`` is safe from any thread.

    ``TenantResolver(engine, config, maxsize=10_000, ttl=60, negative_ttl=5)``; pass a
    ``TenantCache`` to share one cache between resolvers.
    """

    def __init__(
        self,
        engine: Engine,
        config: Config | None = None,
        *,
        cache: TenantCache | None = None,
        maxsize: int = 10_000,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
    ) -> None:
        super().__init__(config, cache, maxsize, ttl, negative_ttl)
        self.engine = engine

    def resolve(self, host: str | None) -> Tenant | None:
        """The tenant owning ``host`` (a Host header: any case, maybe a port), or None."""
        domain = normalize_host(host or "")
        if not domain:
            return None
        found = self.cache.get(domain)
        if found is not MISSING:
            return found
        return self.load(domain)

    def load(self, domain: str) -> Tenant | None:
        """Ask the database about a normalised host (one asker per host at a time) and
        cache the answer; ``resolve`` calls it on a cache miss."""
        lock = self._enter(domain, threading.Lock)
        try:
            with lock:
                found = self.cache.get(domain, count=False)  # answered while we waited?
                if found is not MISSING:
                    return found
                generation = self.cache.generation
                with self.engine.connect() as conn:
                    row = conn.execute(self._query, by_domain_params(domain)).first()
                self._count_query()
                tenant = tenant_from_row(row) if row else None
                self.cache.put(domain, tenant, generation)
                return tenant
        finally:
            self._leave(domain)


class AsyncTenantResolver(_Base):
    """The asyncio form of ``TenantResolver``, over an ``AsyncEngine``
    (``create_async_engine("postgresql+psycopg://...")``); ``await resolve(host)``."""

    def __init__(
        self,
        engine: AsyncEngine,
        config: Config | None = None,
        *,
        cache: TenantCache | None = None,
        maxsize: int = 10_000,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
    ) -> None:
        super().__init__(config, cache, maxsize, ttl, negative_ttl)
        self.engine = engine

    async def resolve(self, host: str | None) -> Tenant | None:
        """The tenant owning ``host``, or None; a cached answer costs no await on I/O."""
        domain = normalize_host(host or "")
        if not domain:
            return None
        found = self.cache.get(domain)
        if found is not MISSING:
            return found
        key = (id(asyncio.get_running_loop()), domain)
        lock = self._enter(key, asyncio.Lock)
        try:
            async with lock:
                found = self.cache.get(domain, count=False)
                if found is not MISSING:
                    return found
                generation = self.cache.generation
                async with self.engine.connect() as conn:
                    row = (await conn.execute(self._query, by_domain_params(domain))).first()
                self._count_query()
                tenant = tenant_from_row(row) if row else None
                self.cache.put(domain, tenant, generation)
                return tenant
        finally:
            self._leave(key)
