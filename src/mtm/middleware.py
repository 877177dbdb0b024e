"""ASGI and WSGI middleware: find the tenant from the Host header, put it on the request.

``TenantMiddleware(app, resolver)`` (ASGI: Starlette, FastAPI, Django's ASGI handler,
any framework) sets ``scope["mtm.tenant"]`` and ``scope["state"]["tenant"]`` (so
Starlette's ``request.state.tenant`` works). ``WSGITenantMiddleware(app, resolver)``
(Flask, Django's WSGI handler ...) sets ``environ["mtm.tenant"]``.

A host that no tenant owns gets ``404 Not Found`` by default. ``on_unknown`` changes
that: ``"pass"`` lets the request through with the tenant set to None (for a landing
page or a sign-up form), or give an application (ASGI or WSGI, as the middleware) that
answers such requests.

Neither middleware depends on a framework. The ASGI one takes either resolver: with the
async one it awaits the lookup; with the sync one a cached answer is used directly and
a lookup that needs the database runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Literal

from .identifiers import normalize_host
from .registry import Tenant
from .resolver import MISSING, AsyncTenantResolver, TenantResolver

SCOPE_KEY = "mtm.tenant"
ENVIRON_KEY = "mtm.tenant"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

NOT_FOUND_BODY = b"Not Found: no tenant serves this host\n"


def _asgi_host(scope: Scope) -> str:
    for name, value in scope.get("headers") or ():
        if name == b"host":
            return bytes(value).decode("latin-1")
    server = scope.get("server")
    return str(server[0]) if server else ""


async def not_found_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """The default answer to an unknown host: 404; a websocket is refused (closed before
    it is accepted, which servers answer with 403)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4404})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(NOT_FOUND_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": NOT_FOUND_BODY})


class TenantMiddleware:
    """Pure ASGI middleware resolving ``scope``'s Host header to a tenant."""

    def __init__(
        self,
        app: ASGIApp,
        resolver: TenantResolver | AsyncTenantResolver,
        *,
        on_unknown: ASGIApp | Literal["pass"] | None = None,
    ) -> None:
        self.app = app
        self.resolver = resolver
        self.on_unknown = on_unknown

    async def resolve(self, host: str) -> Tenant | None:
        if isinstance(self.resolver, AsyncTenantResolver):
            return await self.resolver.resolve(host)
        domain = normalize_host(host)
        if not domain:
            return None
        found = self.resolver.cache.get(domain)
        if found is not MISSING:
            return found
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.resolver.load, domain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        tenant = await self.resolve(_asgi_host(scope))
        scope[SCOPE_KEY] = tenant
        # the server gives each request its own copy of the lifespan state
        scope.setdefault("state", {})["tenant"] = tenant
        if tenant is None and self.on_unknown != "pass":
            handler = self.on_unknown if callable(self.on_unknown) else not_found_asgi
            await handler(scope, receive, send)
            return
        await self.app(scope, receive, send)


def not_found_wsgi(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The default WSGI answer to an unknown host: 404."""
    start_response(
        "404 Not Found",
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(NOT_FOUND_BODY))),
        ],
    )
    return [NOT_FOUND_BODY]


class WSGITenantMiddleware:
    """WSGI middleware resolving the Host header to ``environ["mtm.tenant"]``."""

    def __init__(
        self,
        app: WSGIApp,
        resolver: TenantResolver,
        *,
        on_unknown: WSGIApp | Literal["pass"] | None = None,
    ) -> None:
        self.app = app
        self.resolver = resolver
        self.on_unknown = on_unknown

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or ""
        tenant = self.resolver.resolve(host)
        environ[ENVIRON_KEY] = tenant
        if tenant is None and self.on_unknown != "pass":
            handler = self.on_unknown if callable(self.on_unknown) else not_found_wsgi
            return handler(environ, start_response)
        return self.app(environ, start_response)


def current_tenant(scope_or_environ: MutableMapping[str, Any]) -> Tenant | None:
    """The tenant the middleware put on an ASGI scope or WSGI environ (None if none)."""
    tenant = scope_or_environ.get(SCOPE_KEY)
    return tenant if isinstance(tenant, Tenant) else None
