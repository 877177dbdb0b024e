"""ASGI and WSGI middleware, and the example applications served over real HTTP."""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy.engine import Engine

import mtm
from _reliability import wait_until
from conftest import ROOT, Project, make_project

EXAMPLES = ROOT / "examples"


# --- the middleware on its own ----------------------------------------------------------


@pytest.fixture
def registry(project: Project) -> Project:
    assert project.cli("create", "acme", "--domain", "acme.example.com").exit_code == 0
    return project


@pytest.fixture
def engine(registry: Project) -> Iterator[Engine]:
    eng = mtm.create_app_engine(registry.url, pool_size=1)
    try:
        yield eng
    finally:
        eng.dispose()


def _call_asgi(app: Any, scope: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """Run one request through an ASGI app: (status, the scope the inner app saw)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await app(scope, receive, send)

    asyncio.run(run())
    seen = next((m["scope"] for m in sent if m["type"] == "test.scope"), None)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, seen


async def inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "test.scope", "scope": scope})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _scope(host: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", host.encode())]}


def test_asgi_middleware_with_either_resolver(registry: Project, engine: Engine) -> None:
    resolver = mtm.TenantResolver(engine)
    app = mtm.TenantMiddleware(inner, resolver)
    status, scope = _call_asgi(app, _scope("ACME.example.com:8000"))
    assert status == 200 and scope is not None
    assert scope["mtm.tenant"].schema == "acme"
    assert scope["state"]["tenant"].schema == "acme"
    assert mtm.current_tenant(scope).schema == "acme"  # type: ignore[union-attr]
    assert _call_asgi(app, _scope("evil.example.com")) == (404, None)
    assert _call_asgi(app, _scope("acme.example.com"))[0] == 200
    assert (resolver.queries, resolver.cache.misses, resolver.cache.hits) == (2, 2, 1)

    async def with_async_resolver() -> None:
        aengine = mtm.create_async_app_engine(registry.url, pool_size=1)
        try:
            resolver = mtm.AsyncTenantResolver(aengine)
            app = mtm.TenantMiddleware(inner, resolver, on_unknown="pass")
            seen: list[Any] = []

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "test.scope":
                    seen.append(message["scope"]["mtm.tenant"])

            async def receive() -> dict[str, Any]:
                return {"type": "http.request"}

            await app(_scope("acme.example.com"), receive, send)
            await app(_scope("other.example.com"), receive, send)
            assert [t.schema if t else None for t in seen] == ["acme", None]
        finally:
            await aengine.dispose()

    asyncio.run(with_async_resolver())


def test_asgi_unknown_host_handler_and_lifespan(engine: Engine) -> None:
    async def teapot(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = mtm.TenantMiddleware(inner, mtm.TenantResolver(engine), on_unknown=teapot)
    assert _call_asgi(app, _scope("nobody.test"))[0] == 418
    assert _call_asgi(app, {"type": "http", "headers": []})[0] == 418  # no Host at all

    lifespan: list[str] = []

    async def app_inner(scope: Any, receive: Any, send: Any) -> None:
        lifespan.append(scope["type"])

    async def run() -> None:
        await mtm.TenantMiddleware(app_inner, mtm.TenantResolver(engine))(
            {"type": "lifespan"},
            None,
            None,  # type: ignore[arg-type]
        )

    asyncio.run(run())
    assert lifespan == ["lifespan"]


def test_wsgi_middleware(engine: Engine) -> None:
    seen: list[Any] = []

    def wsgi_inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["mtm.tenant"])
        start_response("200 OK", [])
        return [b"ok"]

    statuses: list[str] = []

    def start_response(status: str, headers: Any) -> None:
        statuses.append(status)

    resolver = mtm.TenantResolver(engine)
    app = mtm.WSGITenantMiddleware(wsgi_inner, resolver)
    app({"HTTP_HOST": "acme.example.com:5000"}, start_response)
    body = app({"HTTP_HOST": "nobody.example.com"}, start_response)
    assert b"".join(body).startswith(b"Not Found")
    passing = mtm.WSGITenantMiddleware(wsgi_inner, resolver, on_unknown="pass")
    passing({"SERVER_NAME": "nobody.example.com"}, start_response)
    assert statuses == ["200 OK", "404 Not Found", "200 OK"]
    assert [t.schema if t else None for t in seen] == ["acme", None]


# --- the example applications, over HTTP ------------------------------------------------


def _load(name: str) -> ModuleType:
    path = EXAMPLES / "apps" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mtm_example_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shop(tmp_path: Path, database_url: str) -> Project:
    """Two tenants made from examples/migrations (customers table, a welcome row)."""
    migrations = (EXAMPLES / "migrations").as_posix()
    project = make_project(
        tmp_path / "shop", database_url, f'migrations_directory = "{migrations}"\n'
    )
    for schema in ("acme", "globex"):
        r = project.cli("create", schema, "--domain", f"{schema}.localhost")
        assert r.exit_code == 0, r.output
    project.query("INSERT INTO acme.customers (name, email) VALUES ('Wile E.', 'w@acme.test')")
    return project


def _request(
    port: int, host: str, method: str = "GET", body: dict[str, str] | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Host": host, "Content-Type": "application/json"}
        conn.request(method, "/customers", body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        is_json = response.getheader("content-type", "").startswith("application/json")
        return response.status, json.loads(data) if is_json else data
    finally:
        conn.close()


def _check_tenants_apart(port: int) -> None:
    status, data = _request(port, f"acme.localhost:{port}")
    assert status == 200
    assert data == {"tenant": "acme", "customers": ["Welcome customer of acme", "Wile E."]}
    status, data = _request(port, "GLOBEX.localhost")
    assert (status, data) == (
        200,
        {"tenant": "globex", "customers": ["Welcome customer of globex"]},
    )
    status, data = _request(port, "globex.localhost", "POST", {"name": "Hank", "email": "h@g.test"})
    assert status == 200 and data["customers"][-1] == "Hank"
    status, data = _request(port, "acme.localhost")
    assert "Hank" not in data["customers"]
    status, _ = _request(port, "initech.localhost")
    assert status == 404
    status, _ = _request(port, f"127.0.0.1:{port}")
    assert status == 404


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port chosen by the kernel, held until the server runs
    return sock


def test_starlette_example_over_http(shop: Project) -> None:
    import uvicorn

    app = _load("starlette_app").create_app(shop.url)
    sock = _listening_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), message="uvicorn to start")
        assert server.started, "uvicorn stopped before it started"
        _check_tenants_apart(port)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not thread.is_alive()
    assert shop.scalar("SELECT count(*) FROM globex.customers WHERE name = 'Hank'") == 1


def test_flask_example_over_http(shop: Project) -> None:
    from werkzeug.serving import make_server

    app = _load("flask_app").create_app(shop.url)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _check_tenants_apart(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert not thread.is_alive()
    assert shop.scalar("SELECT count(*) FROM acme.customers") == 2


def test_asgi_websocket_from_unknown_host_is_refused(engine: Engine) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = mtm.TenantMiddleware(inner, mtm.TenantResolver(engine))
    scope = {"type": "websocket", "path": "/ws", "headers": [(b"host", b"nobody.test")]}
    asyncio.run(app(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 4404}]
