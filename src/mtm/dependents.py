"""What ``DROP SCHEMA ... CASCADE`` would take with it from outside the schema.

Dropping a tenant drops its schema with CASCADE, and PostgreSQL then also drops every
object elsewhere that depends on something in it: a view in ``public`` that reads the
tenant's table, a foreign key from a public table, a column default calling the
tenant's function, a sequence owned by its column. ``mtm drop`` asks this query first
(under the schema's lock, in the drop's transaction) and refuses while it names any
such object, unless told to take them too.

The query walks ``pg_depend`` from the schema the way the cascade does: every object
depending on a dropped one is dropped, and an object that is an internal part of
another (a view's rewrite rule) takes its owner with it. An object is *outside* when
the schema it lives in (its table's, for rules, defaults, triggers and policies) is
not the tenant's; objects of catalogs mtm does not know count as outside. Internal
parts of a dropped object (a view's rule and row type, a table's toast table) and
objects going with an outside object that is named (its indexes) are not named.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from .identifiers import quote_literal, validate_schema_name
from .sqlrun import driver

# (catalog, the expression of its namespace given its oid as "o.objid").
_HOME = {
    "pg_class": "SELECT relnamespace FROM pg_class WHERE oid = o.objid",
    "pg_type": "SELECT typnamespace FROM pg_type WHERE oid = o.objid",
    "pg_proc": "SELECT pronamespace FROM pg_proc WHERE oid = o.objid",
    "pg_constraint": "SELECT connamespace FROM pg_constraint WHERE oid = o.objid",
    "pg_operator": "SELECT oprnamespace FROM pg_operator WHERE oid = o.objid",
    "pg_opclass": "SELECT opcnamespace FROM pg_opclass WHERE oid = o.objid",
    "pg_opfamily": "SELECT opfnamespace FROM pg_opfamily WHERE oid = o.objid",
    "pg_collation": "SELECT collnamespace FROM pg_collation WHERE oid = o.objid",
    "pg_conversion": "SELECT connamespace FROM pg_conversion WHERE oid = o.objid",
    "pg_statistic_ext": "SELECT stxnamespace FROM pg_statistic_ext WHERE oid = o.objid",
    "pg_ts_config": "SELECT cfgnamespace FROM pg_ts_config WHERE oid = o.objid",
    "pg_ts_dict": "SELECT dictnamespace FROM pg_ts_dict WHERE oid = o.objid",
    "pg_ts_parser": "SELECT prsnamespace FROM pg_ts_parser WHERE oid = o.objid",
    "pg_ts_template": "SELECT tmplnamespace FROM pg_ts_template WHERE oid = o.objid",
    "pg_extension": "SELECT extnamespace FROM pg_extension WHERE oid = o.objid",
    "pg_default_acl": "SELECT defaclnamespace FROM pg_default_acl WHERE oid = o.objid",
    "pg_rewrite": "SELECT c.relnamespace FROM pg_rewrite r JOIN pg_class c "
    "ON c.oid = r.ev_class WHERE r.oid = o.objid",
    "pg_attrdef": "SELECT c.relnamespace FROM pg_attrdef a JOIN pg_class c "
    "ON c.oid = a.adrelid WHERE a.oid = o.objid",
    "pg_trigger": "SELECT c.relnamespace FROM pg_trigger t JOIN pg_class c "
    "ON c.oid = t.tgrelid WHERE t.oid = o.objid",
    "pg_policy": "SELECT c.relnamespace FROM pg_policy p JOIN pg_class c "
    "ON c.oid = p.polrelid WHERE p.oid = o.objid",
    "pg_amop": "SELECT f.opfnamespace FROM pg_amop a JOIN pg_opfamily f "
    "ON f.oid = a.amopfamily WHERE a.oid = o.objid",
    "pg_amproc": "SELECT f.opfnamespace FROM pg_amproc a JOIN pg_opfamily f "
    "ON f.oid = a.amprocfamily WHERE a.oid = o.objid",
    "pg_namespace": "SELECT o.objid",
}


# Run before the query, in its transaction, so that every name it gives is qualified.
QUALIFIED_NAMES = "SET LOCAL search_path = pg_catalog"


def outside_dependents(conn: Connection, schema: str) -> tuple[str, ...]:
    """The objects outside ``schema`` that dropping it would drop (``outside_dependents_sql``).

    Run inside the drop's transaction, under the schema's lock, so that none can appear
    between this answer and the drop; leaves ``search_path`` at ``pg_catalog`` for the
    rest of that transaction.
    """
    dbapi = driver(conn)
    dbapi.execute(QUALIFIED_NAMES, prepare=False)
    rows = dbapi.execute(outside_dependents_sql(schema), prepare=False).fetchall()
    return tuple(str(row[0]) for row in rows)


def outside_dependents_sql(schema: str) -> str:
    """A query: one row per object outside ``schema`` that dropping it would drop,
    described as PostgreSQL names it (``view public.report``), sorted."""
    schema = validate_schema_name(schema)
    home = "\n".join(
        f"        WHEN '{catalog}'::regclass THEN ({query})" for catalog, query in _HOME.items()
    )
    return f"""
WITH RECURSIVE dropped(classid, objid, objsubid) AS (
    SELECT 'pg_namespace'::regclass::oid, n.oid, 0
    FROM pg_namespace n WHERE n.nspname = {quote_literal(schema)}
  UNION
    SELECT next.classid, next.objid, next.objsubid
    FROM dropped x
    CROSS JOIN LATERAL (
        SELECT d.classid, d.objid, d.objsubid FROM pg_depend d
        WHERE d.refclassid = x.classid AND d.refobjid = x.objid
          AND (x.objsubid = 0 OR d.refobjsubid = x.objsubid) AND d.deptype <> 'p'
      UNION ALL
        SELECT d.refclassid, d.refobjid, 0 FROM pg_depend d
        WHERE d.classid = x.classid AND d.objid = x.objid AND d.deptype = 'i'
    ) next
),
placed AS (
    SELECT o.classid, o.objid, o.objsubid, CASE o.classid
{home}
    END AS home
    FROM dropped o
),
beyond AS (
    SELECT classid, objid, objsubid FROM placed
    WHERE home IS DISTINCT FROM (SELECT oid FROM pg_namespace
                                 WHERE nspname = {quote_literal(schema)})
)
SELECT pg_describe_object(o.classid, o.objid, o.objsubid) AS object
FROM beyond o
WHERE NOT EXISTS (  -- a part of another dropped object: a view's rule, a toast table
    SELECT 1 FROM pg_depend d JOIN dropped whole
      ON whole.classid = d.refclassid AND whole.objid = d.refobjid
    WHERE d.classid = o.classid AND d.objid = o.objid AND d.deptype = 'i'
      AND (whole.classid, whole.objid) <> (o.classid, o.objid)
) AND NOT EXISTS (  -- goes with another object named here: a table's index
    SELECT 1 FROM pg_depend d JOIN beyond whole
      ON whole.classid = d.refclassid AND whole.objid = d.refobjid
    WHERE d.classid = o.classid AND d.objid = o.objid AND d.deptype = 'a'
      AND (whole.classid, whole.objid) <> (o.classid, o.objid)
)
ORDER BY 1
"""
