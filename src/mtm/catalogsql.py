"""SQL fragments of ``catalog``'s query that make what it reads schema-neutral.

Pure text, no connection: a schema's own prefix taken out of texts (``neutral``),
stored expression trees masked and hashed (``tree``, and ``TREES``, which masks each
distinct tree of a fleet once), columns named from their numbers (``colnames``),
references qualified only outside the schema (``refname``), and what an expression
depends on (``deps``). ``catalog``'s docstring says why each is done this way. The
fragments refer to the ``s`` row of the schema being read (``s.sid``, ``s.prefix``,
``s.pattern``) and to the parameters in ``PARAMS``.
"""

from __future__ import annotations

# OIDs at or above FirstNormalObjectId belong to objects made after initdb (user objects).
_USER_OID = r"(?:1638[4-9]|1639[0-9]|16[4-9][0-9][0-9]|1[7-9][0-9]{3}|[2-9][0-9]{4}|[0-9]{6,})"
# Types whose constant value is an OID (reg* and oid): the bytes differ from schema to schema.
_OID_TYPES = "24|26|2202|2203|2204|2205|2206|3734|3769|4089|4096|4191"

_REST = (
    r"((?:[^']|'')*'::reg[a-z]+)|('(?:[^']|'')*')|(\"(?:[^\"]|\"\")*\")"
    r"|(?<![A-Za-z0-9_$.\"])"
)

PARAMS = {
    "re_loc": r":(?:stmt_)?location -?[0-9]+|:stmt_len [0-9]+",
    # attribute numbers (see above) and how a cast was written (implicit or explicit: a
    # dump writes every cast out), which changes nothing but the display
    "re_attno": (
        r":(varattno|varattnosyn|resorigcol|funcformat|relabelformat|coerceformat"
        r"|convertformat|row_format) -?[0-9]+"
    ),
    "re_const": (
        rf"(:consttype (?:{_OID_TYPES}|{_USER_OID}) [^{{}}\[]*:constvalue [0-9]+ )\[[^]]*\]"
    ),
    "re_oid": rf"(?<![A-Za-z0-9_.-]){_USER_OID}(?![A-Za-z0-9_.])",
    "re_special": r"([^A-Za-z0-9_])",
    # The rewrite of the schema prefix: a literal 'schema.x'::reg... loses it (groups 1
    # and 2), other literals (3) and quoted names (4) are kept whole, and the prefix
    # anywhere else, unless it ends a longer name, goes. The pattern is written once
    # with \x01 standing for the prefix, so that it is compiled once, not per schema.
    "re_marked": "(')\x01" + _REST + "\x01",
    "re_lit_ref": "(')",
    "re_lit_ref_rest": _REST,
    "re_keep": r"\1\2\3\4",
}


def neutral(expr: str) -> str:
    """SQL: ``expr`` without the schema's own prefix (literals and quoted names kept).

    ``expr`` is evaluated once. A serial column's default, ``nextval('acme.t_id_seq'
    ::regclass)`` with no other quote, loses the prefix without a regular expression (a
    fleet has thousands; the pattern costs 20 us each). A text that already holds chr(1)
    (never seen in practice) takes the slower pattern compiled for its schema.
    """
    return (
        "(SELECT CASE WHEN strpos(z.v, s.prefix) = 0 THEN z.v "
        "WHEN left(z.v, 9 + length(s.prefix)) = 'nextval(''' || s.prefix "
        "AND right(z.v, 12) = '''::regclass)' AND strpos(substr(z.v, 10 + length(s.prefix)), "
        "'''') = length(z.v) - length(s.prefix) - 20 "
        "THEN 'nextval(''' || substr(z.v, 10 + length(s.prefix)) "
        "WHEN strpos(z.v, chr(1)) > 0 THEN regexp_replace(z.v, s.pattern, :re_keep, 'g') "
        "ELSE replace(regexp_replace(replace(z.v, s.prefix, chr(1)), :re_marked, :re_keep, 'g'), "
        f"chr(1), s.prefix) END FROM (SELECT {expr} AS v) z)"
    )


def tree(expr: str) -> str:
    """SQL: MD5 of a stored node tree with positions, attribute numbers and user OIDs masked."""
    masked = (
        f"regexp_replace(regexp_replace(regexp_replace(regexp_replace({expr}::text, "
        ":re_loc, '', 'g'), :re_attno, '\\1 ?', 'g'), :re_const, '\\1[?]', 'g'), "
        ":re_oid, '?', 'g')"
    )
    return f"md5({masked})"


# The node trees of CHECK constraints and of index expressions and predicates, each
# distinct text masked once (``tree``, about 40 us a tree): across a fleet they are
# mostly the same text, and the parts below join this by text instead of masking
# every copy. Before PostgreSQL 18 a tree holds the position of the expression in the
# script that made it, which differs from tenant to tenant: trees are told apart
# without positions (one expression each), then masked. Other trees (views, defaults
# of generated columns...) are fewer and hold OIDs that differ from schema to schema:
# masked where they are.
TREES = f"""
raw (v, k) AS (
    SELECT DISTINCT d.v, regexp_replace(d.v, :re_loc, '', 'g') FROM (
        SELECT k.conbin::text FROM pg_constraint k JOIN s ON k.connamespace = s.sid
         WHERE k.conbin IS NOT NULL
        UNION SELECT i.indexprs::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
          JOIN s ON c.relnamespace = s.sid WHERE i.indexprs IS NOT NULL
        UNION SELECT i.indpred::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
          JOIN s ON c.relnamespace = s.sid WHERE i.indpred IS NOT NULL) d (v)
), trees (v, h) AS MATERIALIZED (
    SELECT raw.v, m.h FROM raw JOIN (
        SELECT u.k, {tree("u.k")} FROM (SELECT DISTINCT raw.k FROM raw) u) m (k, h)
      ON m.k = raw.k
),"""


def colnames(rel: str, attnums: str) -> str:
    """SQL: the names of columns ``attnums`` (an array) of ``rel``, comma-separated, in order.

    Most keys have one column: that one is looked up alone, which costs a fifth of
    unnesting the array (a fleet has tens of thousands of such keys).
    """
    return (
        f"(CASE WHEN cardinality({attnums}) = 1 THEN coalesce((SELECT quote_ident(aa.attname) "
        f"FROM pg_attribute aa WHERE aa.attrelid = {rel} "
        f"AND aa.attnum = ({attnums})[array_lower({attnums}, 1)] "
        "AND aa.attnum <> 0), '(expr)') ELSE "
        "(SELECT string_agg(coalesce(quote_ident(aa.attname), '(expr)'), ', ' ORDER BY kk.i) "
        f"FROM unnest({attnums}) WITH ORDINALITY AS kk(n, i) "
        f"LEFT JOIN pg_attribute aa ON aa.attrelid = {rel} AND aa.attnum = kk.n) END)"
    )


def refname(nsp: str, name: str) -> str:
    """SQL: a relation, type or function name, qualified only when outside the schema."""
    return (
        f"(CASE WHEN {nsp} = s.sid THEN quote_ident({name}) ELSE "
        f"(SELECT quote_ident(o.nspname) FROM pg_namespace o WHERE o.oid = {nsp}) "
        f"|| '.' || quote_ident({name}) END)"
    )


# What an expression depends on. Columns and relations are named from the catalog
# directly (the common case, and cheap); anything else through pg_identify_object.
# pg_identify_object is called only for what is not a relation (it costs 15 us a call),
# and a column is found by both keys of pg_attribute's index.
DEPS = (
    "(SELECT string_agg(DISTINCT CASE WHEN dd.refclassid = 'pg_class'::regclass THEN "
    "'relation ' || "
    + refname("rc.relnamespace", "rc.relname")
    + " || coalesce('.' || quote_ident(ra.attname), '') ELSE "
    + neutral(
        "(SELECT io.type || ' ' || io.identity FROM "
        "pg_identify_object(dd.refclassid, dd.refobjid, dd.refobjsubid) io)"
    )
    + " END, '; ') FROM pg_depend dd "
    "LEFT JOIN pg_class rc ON dd.refclassid = 'pg_class'::regclass AND rc.oid = dd.refobjid "
    "LEFT JOIN pg_attribute ra ON dd.refclassid = 'pg_class'::regclass "
    "AND ra.attrelid = dd.refobjid AND ra.attnum = dd.refobjsubid AND dd.refobjsubid <> 0 "
    "WHERE dd.classid = '{classid}'::regclass AND dd.objid = {objid} "
    "AND dd.deptype IN ('n', 'a') AND dd.refclassid <> 'pg_namespace'::regclass)"
)


def deps(classid: str, objid: str) -> str:
    return DEPS.replace("{classid}", classid).replace("{objid}", objid)
