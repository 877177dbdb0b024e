"""What a schema contains, read from ``pg_catalog`` without locking any of its tables.

Two schemas built from the same DDL must look the same here, whatever they are called,
so every fact is schema-neutral: names of objects in the schema itself are unqualified,
objects elsewhere keep their schema (``public.plans``). ``fingerprints`` hashes the
facts of many schemas in one query, so a fleet can be grouped by structure cheaply;
``describe`` returns the same facts as a ``SchemaCatalog``, and ``compare`` names what
is missing, extra or different between two of them (those values and ``compare`` live
in ``schemacatalog`` and are re-exported here).

No table lock, ever. The ``pg_get_*def`` functions and ``pg_get_expr`` with a relation
take ACCESS SHARE on the table (they open it to name its columns), so they would wait
behind a migration's ACCESS EXCLUSIVE and, over thousands of schemas in one statement,
run out of lock slots. They are not used. Instead:

* structure comes from the catalog columns themselves (column names by number, FK
  actions, sequence parameters, trigger type bits, enum labels);
* column defaults are deparsed with ``pg_get_expr(adbin, 0)``, which has no relation
  and takes no lock (a default cannot refer to a column);
* expressions that refer to columns (CHECK, generated columns, index expressions and
  predicates, trigger WHEN, views) are stored node trees: they are compared as an MD5
  of the tree with source positions, attribute numbers, the way casts were written (a
  dump writes implicit casts out) and object OIDs masked, plus the
  sorted list of objects the expression depends on (``pg_depend``, named by
  ``pg_identify_object``). Masking attribute numbers keeps a schema whose columns were
  dropped and re-added equal to one built fresh; the dependency list still says which
  columns, functions and types an expression uses. What this cannot tell apart: the same
  objects used in a different order within one expression (``a > b`` and ``b > a``), and
  two enum literals in a CHECK or index predicate.

PostgreSQL 18 records each NOT NULL column as a constraint too; those rows say no more
than the column's ``not_null`` and are left out (a fleet has tens of thousands), unless
NOT VALID or NO INHERIT: so the same schema has the same facts on 15 and on 18.

Texts that name the schema (``nextval('acme.t_id_seq'::regclass)``, ``'x'::acme.mood``)
lose the schema prefix through one regular expression that skips string literals and
quoted identifiers, except the ``'schema.name'::reg...`` literals that are themselves
references.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .catalogsql import PARAMS, TREES, colnames, deps, neutral, refname, tree
from .errors import MtmError
from .identifiers import quote_literal
from .schemacatalog import (
    FIELDS,
    SEEDS,
    CatalogObject,
    Difference,
    ObjectKey,
    SchemaCatalog,
    combine,
    compare,
)

__all__ = [
    "FIELDS",
    "CatalogObject",
    "Difference",
    "SchemaCatalog",
    "compare",
    "describe",
    "fingerprints",
]

# Each part yields (sid, kind, parent, name, detail text[]). The detail fields of a kind
# are named in ``schemacatalog.FIELDS``, in the same order.

_RELKINDS = "'r', 'p', 'v', 'm', 'f', 'c'"

_PARTS = [
    # relations (tables, views, materialized views, foreign tables, composite types)
    f"""
    SELECT s.sid, 'relation', '', c.relname::text, ARRAY[
        c.relkind::text, c.relpersistence::text, c.relrowsecurity::text,
        (SELECT p.partstrat::text || ' ' || {colnames("c.oid", "p.partattrs::int2[]")}
                || coalesce(' ' || {tree("p.partexprs")}, '')
           FROM pg_partitioned_table p WHERE p.partrelid = c.oid),
        (SELECT string_agg({refname("pc.relnamespace", "pc.relname")}, ', ' ORDER BY ih.inhseqno)
           FROM pg_inherits ih JOIN pg_class pc ON pc.oid = ih.inhparent
          WHERE ih.inhrelid = c.oid)
          || coalesce(' ' || {tree("c.relpartbound")}, ''),
        (SELECT {tree("r.ev_action")} || ' ' || coalesce({deps("pg_rewrite", "r.oid")}, '')
           FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename = '_RETURN')]
    FROM pg_class c JOIN s ON c.relnamespace = s.sid
    WHERE c.relkind IN ({_RELKINDS}) AND NOT c.relname = ANY(:exclude)
    """,
    # columns
    f"""
    SELECT s.sid, 'column', c.relname::text, a.attname::text, ARRAY[
        (row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum))::text,
        CASE WHEN t.typnamespace = s.sid THEN {neutral("format_type(a.atttypid, a.atttypmod)")}
             ELSE format_type(a.atttypid, a.atttypmod) END,
        a.attnotnull::text,
        CASE WHEN ad.adbin IS NOT NULL AND a.attgenerated = ''
             THEN {neutral("pg_get_expr(ad.adbin, 0)")} END,
        nullif(a.attidentity::text, ''),
        CASE WHEN a.attgenerated <> '' THEN a.attgenerated::text || ' ' || {tree("ad.adbin")}
             || ' ' || coalesce({deps("pg_attrdef", "ad.oid")}, '') END,
        CASE WHEN a.attcollation <> t.typcollation THEN
             (SELECT quote_ident(co.collname) FROM pg_collation co
               WHERE co.oid = a.attcollation) END]
    FROM pg_class c JOIN s ON c.relnamespace = s.sid
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    WHERE c.relkind IN ({_RELKINDS}) AND NOT c.relname = ANY(:exclude)
    """,
    # constraints of tables and of domains
    f"""
    SELECT s.sid, 'constraint', coalesce(c.relname, t.typname)::text, k.conname::text, ARRAY[
        k.contype::text,
        {colnames("k.conrelid", "k.conkey")},
        CASE WHEN k.contype = 'f' THEN {refname("f.relnamespace", "f.relname")} END,
        CASE WHEN k.contype = 'f' THEN {colnames("k.confrelid", "k.confkey")} END,
        nullif(k.confupdtype::text, ' '), nullif(k.confdeltype::text, ' '),
        nullif(k.confmatchtype::text, ' '),
        k.condeferrable::text, k.condeferred::text, k.convalidated::text,
        tk.h,
        CASE WHEN k.conbin IS NOT NULL THEN {deps("pg_constraint", "k.oid")} END]
    FROM pg_constraint k JOIN s ON k.connamespace = s.sid
    LEFT JOIN pg_class c ON c.oid = k.conrelid
    LEFT JOIN pg_class f ON f.oid = k.confrelid
    LEFT JOIN pg_type t ON t.oid = k.contypid
    LEFT JOIN trees tk ON tk.v = k.conbin::text
    WHERE ((c.oid IS NOT NULL AND NOT c.relname = ANY(:exclude))
           OR (k.contypid <> 0 AND t.oid IS NOT NULL))
      AND (k.contype <> 'n' OR NOT k.convalidated OR k.connoinherit OR k.contypid <> 0)
    """,
    # indexes
    f"""
    SELECT s.sid, 'index', c.relname::text, x.relname::text, ARRAY[
        am.amname::text,
        i.indisunique::text || CASE WHEN i.indnullsnotdistinct THEN ' nulls not distinct'
                                    ELSE '' END,
        i.indisprimary::text,
        {colnames("i.indrelid", "i.indkey::int2[]")},
        i.indnkeyatts::text,
        array_to_string(i.indoption::int2[], ' '),
        CASE WHEN i.indclass::oid[] && ARRAY(SELECT o.oid FROM pg_opclass o
                                            WHERE NOT o.opcdefault)
        THEN (SELECT string_agg(CASE WHEN o.opcdefault THEN '' ELSE o.opcname::text END, ' '
                                ORDER BY q.i)
                FROM unnest(i.indclass::oid[]) WITH ORDINALITY AS q(oc, i)
                JOIN pg_opclass o ON o.oid = q.oc)
        ELSE repeat(' ', cardinality(i.indclass::oid[]) - 1) END,
        tx.h, tp.h,
        i.indisvalid::text,
        CASE WHEN i.indexprs IS NOT NULL OR i.indpred IS NOT NULL
             THEN {deps("pg_class", "x.oid")} END]
    FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
    JOIN pg_class c ON c.oid = i.indrelid JOIN s ON c.relnamespace = s.sid
    LEFT JOIN pg_am am ON am.oid = x.relam
    LEFT JOIN trees tx ON tx.v = i.indexprs::text LEFT JOIN trees tp ON tp.v = i.indpred::text
    WHERE NOT c.relname = ANY(:exclude)
    """,
    # sequences
    """
    SELECT s.sid, 'sequence', '', c.relname::text, ARRAY[
        format_type(q.seqtypid, NULL), q.seqstart::text, q.seqincrement::text,
        q.seqmin::text, q.seqmax::text, q.seqcache::text, q.seqcycle::text,
        (SELECT d.deptype::text || ' ' || quote_ident(o.relname) || '.'
                || quote_ident(oa.attname)
           FROM pg_depend d JOIN pg_class o ON o.oid = d.refobjid
           LEFT JOIN pg_attribute oa ON oa.attrelid = d.refobjid AND oa.attnum = d.refobjsubid
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
            AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
            AND d.refobjsubid > 0 LIMIT 1)]
    FROM pg_class c JOIN s ON c.relnamespace = s.sid
    JOIN pg_sequence q ON q.seqrelid = c.oid
    WHERE c.relkind = 'S' AND NOT c.relname = ANY(:exclude)
    """,
    # functions and procedures (aggregates included)
    f"""
    SELECT s.sid, 'function', '',
        p.proname::text || '(' || {neutral("pg_get_function_identity_arguments(p.oid)")} || ')',
        ARRAY[
        p.prokind::text, {neutral("pg_get_function_result(p.oid)")},
        (SELECT l.lanname::text FROM pg_language l WHERE l.oid = p.prolang),
        p.provolatile::text, p.proisstrict::text, p.prosecdef::text, p.proparallel::text,
        array_to_string(p.proconfig, ', '),
        {neutral("pg_get_expr(p.proargdefaults, 0)")},
        md5(coalesce(p.prosrc, '')) || coalesce(' ' || {tree("p.prosqlbody")}, '')]
    FROM pg_proc p JOIN s ON p.pronamespace = s.sid
    """,
    # triggers (not the internal ones behind foreign keys)
    f"""
    SELECT s.sid, 'trigger', c.relname::text, g.tgname::text, ARRAY[
        g.tgtype::text,
        (SELECT {refname("f.pronamespace", "f.proname")} FROM pg_proc f WHERE f.oid = g.tgfoid),
        encode(g.tgargs, 'escape'),
        {colnames("g.tgrelid", "g.tgattr::int2[]")},
        CASE WHEN g.tgqual IS NOT NULL THEN {tree("g.tgqual")} END,
        g.tgenabled::text,
        {deps("pg_trigger", "g.oid")}]
    FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid JOIN s ON c.relnamespace = s.sid
    WHERE NOT g.tgisinternal AND NOT c.relname = ANY(:exclude)
    """,
    # row-level security policies (their roles are left out: tenant roles differ by name)
    f"""
    SELECT s.sid, 'policy', c.relname::text, pol.polname::text, ARRAY[
        pol.polcmd::text, pol.polpermissive::text,
        CASE WHEN pol.polqual IS NOT NULL THEN {tree("pol.polqual")} END,
        CASE WHEN pol.polwithcheck IS NOT NULL THEN {tree("pol.polwithcheck")} END,
        {deps("pg_policy", "pol.oid")}]
    FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid JOIN s ON c.relnamespace = s.sid
    WHERE NOT c.relname = ANY(:exclude)
    """,
    # enum types, labels in their order
    """
    SELECT s.sid, 'enum', '', t.typname::text, ARRAY[
        (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
           FROM pg_enum e WHERE e.enumtypid = t.oid)]
    FROM pg_type t JOIN s ON t.typnamespace = s.sid WHERE t.typtype = 'e'
    """,
    # domains (their CHECKs are constraints)
    f"""
    SELECT s.sid, 'domain', '', t.typname::text, ARRAY[
        {neutral("format_type(t.typbasetype, t.typtypmod)")}, t.typnotnull::text,
        {neutral("t.typdefault")}]
    FROM pg_type t JOIN s ON t.typnamespace = s.sid WHERE t.typtype = 'd'
    """,
]

_SCHEMAS = """
WITH s AS (
    SELECT n.oid AS sid, n.nspname::text AS nspname, quote_ident(n.nspname) || '.' AS prefix,
           :re_lit_ref || e.esc || :re_lit_ref_rest || e.esc AS pattern
    FROM pg_namespace n
    CROSS JOIN LATERAL (SELECT regexp_replace(quote_ident(n.nspname) || '.', :re_special,
                                              '\\\\\\1', 'g') AS esc) e
    WHERE n.nspname = ANY(:schemas)
),"""

_FACTS = """
facts (sid, kind, parent, name, detail) AS (
"""

FACTS_SQL = _SCHEMAS + TREES + _FACTS + "\nUNION ALL\n".join(_PARTS) + ")\n"

_LINE = (
    "f.kind || E'\\t' || f.parent || E'\\t' || f.name || E'\\t' "
    "|| array_to_string(f.detail, E'\\t', '\\N')"
)

# The line sums of ``schemacatalog.combine`` (sorting every line instead cost two thirds
# as much as reading the facts). Grouped before it meets the schema list again: joined
# directly, the planner may run every part of ``facts`` once per schema (PostgreSQL 15
# does, at 1,000 schemas 15x slower). ``OFFSET 0`` keeps the lines a subquery of their
# own: pulled up, each line (its subqueries and deparsing included) was computed once
# for each of the sums, which took 14 % of the query at 10,000 schemas.
_SUMS = " || ' ' || ".join(
    f'sum(hashtextextended(f.line COLLATE "C", {seed}))::text' for seed in SEEDS
)
FINGERPRINT_SQL = (
    FACTS_SQL + "SELECT s.nspname, coalesce(g.fingerprint, "
    f"{quote_literal(combine(0, *(0 for _ in SEEDS)))}) FROM s LEFT JOIN ("
    f"SELECT f.sid, md5(count(*)::text || ' ' || {_SUMS}) AS fingerprint "
    f"FROM (SELECT f.sid, {_LINE} AS line FROM facts f OFFSET 0) f GROUP BY f.sid) "
    "g ON g.sid = s.sid"
)

DESCRIBE_SQL = FACTS_SQL + "SELECT f.kind, f.parent, f.name, f.detail FROM facts f"


def _params(schemas: Iterable[str], exclude: Collection[str]) -> dict[str, object]:
    return {**PARAMS, "schemas": list(schemas), "exclude": list(exclude)}


# The catalog query's settings: JIT off, and at least this much memory for its sorts.
_SETTINGS = {"jit": "off", "work_mem": "64MB"}


@contextmanager
def _query_settings(conn: Connection) -> Iterator[None]:
    """Run the catalog query with JIT off and ``work_mem`` at least 64 MB, then put the
    settings back.

    The query is one large statement over whole catalogs, so its estimated cost passes
    ``jit_above_cost`` and a server built with LLVM compiles it first: at 1,000 schemas
    on PostgreSQL 15 that took 10 s for a query that runs in 1 s. Its sorts (columns in
    order, lines by schema) spill to disk at the default 4 MB from a few thousand
    schemas on; in memory the query took 10 % less at 10,000. A larger ``work_mem``
    already set is kept. Set for the session (the connection may have no transaction
    to scope a SET LOCAL) and restored.
    """
    previous = conn.execute(
        sa.text("SELECT current_setting('jit'), current_setting('work_mem')")
    ).one()
    conn.execute(
        sa.text(
            "SELECT set_config('jit', :jit, false), set_config('work_mem', CASE WHEN "
            "pg_size_bytes(current_setting('work_mem')) < pg_size_bytes(:work_mem) "
            "THEN :work_mem ELSE current_setting('work_mem') END, false)"
        ),
        _SETTINGS,
    )
    failed = True
    try:
        yield
        failed = False
    finally:
        if not failed or _transaction_usable(conn):
            conn.execute(
                sa.text(
                    "SELECT set_config('jit', :jit, false), set_config('work_mem', :wm, false)"
                ),
                {"jit": previous[0], "wm": previous[1]},
            )


def _transaction_usable(conn: Connection) -> bool:
    """False when the connection's transaction has failed (its rollback undoes the SET)."""
    info = getattr(conn.connection.driver_connection, "info", None)
    status = getattr(info, "transaction_status", None)
    return status is None or status.name != "INERROR"


def fingerprints(
    conn: Connection, schemas: Iterable[str], *, exclude: Collection[str] = ()
) -> dict[str, str]:
    """The catalog fingerprint of each schema that exists, in one query and without locks.

    Schemas with equal fingerprints have equal ``describe`` results. ``exclude`` names
    tables (with their columns, constraints, indexes and triggers) to leave out, such
    as mtm's own ledger. Schemas that do not exist are absent from the result.
    """
    with _query_settings(conn):
        rows = conn.execute(sa.text(FINGERPRINT_SQL), _params(schemas, exclude)).all()
    return {r[0]: r[1] for r in rows}


def describe(conn: Connection, schema: str, *, exclude: Collection[str] = ()) -> SchemaCatalog:
    """The facts behind ``fingerprints`` for one schema, for comparing in detail."""
    exists = conn.execute(
        sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}
    ).first()
    if exists is None:
        raise MtmError(f"schema {schema!r} does not exist")
    with _query_settings(conn):
        rows = conn.execute(sa.text(DESCRIBE_SQL), _params([schema], exclude)).all()
    objects: dict[ObjectKey, CatalogObject] = {}
    for kind, parent, name, detail in rows:
        obj = CatalogObject(kind, parent, name, tuple(detail))
        objects[(kind, parent, name)] = obj
    return SchemaCatalog(schema, objects)
