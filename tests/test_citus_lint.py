"""The citus-* lint rules against a real cluster: every statement they flag is refused
by Citus in a distributed tenant schema (or, ``SET SCHEMA``, takes the table out of the
cluster), and every alternative the tests call good runs. If Citus changes its mind,
this test says which rule to change."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from conftest import make_project
from test_review_lint import CITUS_BAD, CITUS_GOOD

pytestmark = pytest.mark.citus

TABLE = """
CREATE TABLE t (id int PRIMARY KEY, ref int, note text, token text, at timestamptz DEFAULT now());
ALTER TABLE t ADD CONSTRAINT t_ref_fk FOREIGN KEY (ref) REFERENCES t (id);
INSERT INTO t (id) VALUES (1), (2);
"""

# What Citus says, in part, refusing each.
REFUSED = {
    "citus-trigger": "triggers are not supported on distributed tables",
    "citus-alter-constraint": "alter table command is currently unsupported",
    "citus-volatile-modify": "must not be VOLATILE",
}


def test_what_the_citus_rules_flag_citus_refuses_and_their_alternatives_run(
    tmp_path: Path, citus_url: str
) -> None:
    project = make_project(tmp_path / "app", citus_url)
    project.write(
        "public",
        "0001_touch.sql",
        (
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN NEW.at := now(); RETURN NEW; END$$;"
        ),
    )
    project.write("tenant", "0001_t.sql", TABLE)
    assert project.cli("create", "acme").exit_code == 0
    assert (
        project.scalar(
            "SELECT count(*) FROM citus_schemas WHERE schema_name = 'acme'::regnamespace"
        )
        == 1
    )
    distributed = "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = %s::regclass"
    with psycopg.connect(project.url) as conn:
        for statement, rule in CITUS_BAD.items():
            conn.execute("SET LOCAL search_path TO acme, public")
            if rule == "citus-set-schema":  # refused for a table with foreign keys
                with pytest.raises(psycopg.Error, match="set schema is not allowed"):
                    conn.execute(statement)
                conn.rollback()
                conn.execute("SET LOCAL search_path TO acme, public")
                conn.execute("ALTER TABLE t DROP CONSTRAINT t_ref_fk")
                conn.execute(statement)  # else taken out of the cluster
                assert conn.execute(distributed, ("public.t",)).fetchone() == (0,), statement
            else:
                with pytest.raises(psycopg.Error, match=REFUSED[rule]):
                    conn.execute(statement)
            conn.rollback()
        conn.execute("SET LOCAL search_path TO acme, public")
        for statement in CITUS_GOOD:
            conn.execute(statement)
        conn.commit()
    assert project.scalar(distributed, ("acme.t",)) == 1
