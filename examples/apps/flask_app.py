"""A WSGI application (Flask) serving each tenant its own customers.

The tenant comes from the Host header (``mtm.WSGITenantMiddleware``); each request's
queries run on a connection bound to the tenant's schema (``mtm.tenant_connection``).
Run it against a project made from ``examples/migrations``::

    mtm create acme --domain acme.localhost
    DATABASE_URL=$(mtm db url) flask --app examples/apps/flask_app.py run
    curl -H 'Host: acme.localhost:5000' http://127.0.0.1:5000/customers
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

import mtm


def create_app(database_url: str, *, config: mtm.Config | None = None) -> Flask:
    engine = mtm.create_app_engine(database_url, pool_size=5)
    resolver = mtm.TenantResolver(engine, config, ttl=30, negative_ttl=5)
    app = Flask(__name__)
    app.wsgi_app = mtm.WSGITenantMiddleware(app.wsgi_app, resolver)  # type: ignore[method-assign]

    @app.route("/customers", methods=["GET", "POST"])
    def customers() -> ResponseReturnValue:
        tenant: mtm.Tenant = request.environ["mtm.tenant"]
        with mtm.tenant_connection(engine, tenant) as conn:
            if request.method == "POST":
                body = request.get_json()
                conn.execute(
                    sa.text("INSERT INTO customers (name, email) VALUES (:name, :email)"),
                    {"name": body["name"], "email": body["email"]},
                )
                conn.commit()
            names = list(conn.execute(sa.text("SELECT name FROM customers ORDER BY id")).scalars())
        return jsonify(tenant=tenant.schema, customers=names)

    return app


app = create_app(os.environ["DATABASE_URL"]) if "DATABASE_URL" in os.environ else None
