"""An ASGI application (Starlette + uvicorn) serving each tenant its own customers.

The tenant comes from the Host header (``mtm.TenantMiddleware``); every query runs on an
asyncio connection bound to the tenant's schema (``mtm.async_tenant_connection``), so the
SQL never names a schema. Run it against a project made from ``examples/migrations``::

    mtm create acme --domain acme.localhost
    DATABASE_URL=$(mtm db url) python examples/apps/starlette_app.py
    curl -H 'Host: acme.localhost' http://127.0.0.1:8000/customers
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import mtm


def create_app(database_url: str, *, config: mtm.Config | None = None) -> Starlette:
    engine = mtm.create_async_app_engine(database_url, pool_size=5)
    resolver = mtm.AsyncTenantResolver(engine, config, ttl=30, negative_ttl=5)

    async def customers(request: Request) -> JSONResponse:
        tenant: mtm.Tenant = request.state.tenant
        async with mtm.async_tenant_connection(engine, tenant) as conn:
            if request.method == "POST":
                body = await request.json()
                await conn.execute(
                    sa.text("INSERT INTO customers (name, email) VALUES (:name, :email)"),
                    {"name": body["name"], "email": body["email"]},
                )
                await conn.commit()
            rows = await conn.execute(sa.text("SELECT name FROM customers ORDER BY id"))
            names = list(rows.scalars())
        return JSONResponse({"tenant": tenant.schema, "customers": names})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = Starlette(
        routes=[Route("/customers", customers, methods=["GET", "POST"])], lifespan=lifespan
    )
    app.add_middleware(mtm.TenantMiddleware, resolver=resolver)  # unknown host: 404
    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(os.environ["DATABASE_URL"]), host="127.0.0.1", port=8000)
