"""The test cluster itself: a coordinator and two workers that place a tenant schema."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.citus


def test_a_schema_made_under_schema_based_sharding_is_placed_on_a_worker(citus_url: str) -> None:
    with psycopg.connect(citus_url) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL citus.enable_schema_based_sharding TO on")
            conn.execute("CREATE SCHEMA acme")
            conn.execute("CREATE TABLE acme.things (id bigint PRIMARY KEY, name text)")
            conn.execute("INSERT INTO acme.things VALUES (1, 'one')")
        nodes = conn.execute("SELECT count(*) FROM citus_get_active_worker_nodes()").fetchone()
        placed = conn.execute(
            "SELECT nodeport FROM citus_shards WHERE table_name = 'acme.things'::regclass"
        ).fetchall()
        assert nodes == (2,)
        assert len(placed) == 1
        assert conn.execute("SELECT name FROM acme.things").fetchone() == ("one",)
