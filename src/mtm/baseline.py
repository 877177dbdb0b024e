"""A baseline: the structure of a reference schema as SQL that builds it in any schema.

A team moving onto mtm has tenants whose structure was built by a legacy history of
migrations. New tenants run the baseline instead of that history: it is
``pg_dump --schema-only`` of one reference schema, made schema-neutral so that it can be
run with ``search_path`` set to any new schema:

* session settings (``SET ...``, ``set_config('search_path', ...)``), ``CREATE SCHEMA``,
  ``ALTER SCHEMA``, ``COMMENT ON SCHEMA``, ownership, grants and psql meta-commands are
  dropped;
* references qualified with the reference schema (``acme.orders``, ``"acme".x``, and the
  ``'acme.orders_id_seq'::regclass`` literals of ``nextval``) lose the qualifier, while
  ``public.`` and every other schema stay qualified;
* the text is read token by token, so string literals, quoted identifiers, comments and
  dollar-quoted function bodies are never rewritten; a literal or body that names the
  reference schema is reported in ``Baseline.warnings`` instead, because only a person
  can tell whether it is a reference or data.

It is structure only, unless ``data_tables`` names tables whose rows (put there by
legacy data migrations) should come along: their ``INSERT``s and the positions of
their sequences follow the structure.

``pg_dump`` must have the server's major version (it refuses newer servers, and a newer
one may write syntax an older server does not read); ``find_pg_dump`` looks in the
embedded PostgreSQL's own binaries, the usual install folders and ``PATH``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import pgclient
from .errors import MtmError
from .identifiers import quote_ident


@dataclass(frozen=True)
class Baseline:
    """The neutral SQL of a reference schema and how it was made."""

    schema: str
    sql: str
    pg_dump: str
    server_version: int
    warnings: tuple[str, ...] = ()


def pg_dump_candidates() -> list[str]:
    """Every pg_dump this machine offers, most specific first."""
    return pgclient.candidates("pg_dump")


def pg_dump_version(path: str) -> int | None:
    """The major version a pg_dump reports, or None if it cannot be run."""
    return pgclient.version(path)


def find_pg_dump(server_major: int, candidates: Iterable[str] | None = None) -> str:
    """The first pg_dump whose major version is the server's; raises saying what was found."""
    return pgclient.find("pg_dump", server_major, candidates)


# --- reading pg_dump's SQL --------------------------------------------------------------

CODE, LITERAL, DOLLAR, QUOTED, COMMENT = "code", "literal", "dollar", "quoted", "comment"

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokens(sql: str) -> list[Token]:
    """Split SQL into code, string literals, dollar-quoted bodies, quoted names, comments.

    Statement ends (``;``) and psql meta-command lines (``\\restrict``) are code tokens
    of their own.

    Longer than most: one scanner loop with a branch per kind of token, all sharing the
    position and the code run not yet flushed; split up, each branch would hand that
    state back and forth.
    """
    out: list[Token] = []
    i, n, start = 0, len(sql), 0

    def flush(upto: int) -> None:
        if upto > start:
            out.append(Token(CODE, sql[start:upto]))

    while i < n:
        ch = sql[i]
        if ch == "'":
            flush(i)
            escape = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _ident_char(sql[i - 2]))
            j = i + 1
            while j < n:
                if escape and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == "'":
                    if j + 1 < n and sql[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            out.append(Token(LITERAL, sql[i : j + 1]))
            i = start = j + 1
        elif ch == '"':
            flush(i)
            j = i + 1
            while j < n and not (sql[j] == '"' and sql[j + 1 : j + 2] != '"'):
                j += 2 if sql[j] == '"' else 1
            out.append(Token(QUOTED, sql[i : j + 1]))
            i = start = j + 1
        elif ch == "$" and (i == 0 or not _ident_char(sql[i - 1])):
            match = _DOLLAR_TAG.match(sql, i)
            if match is None:
                i += 1
                continue
            flush(i)
            end = sql.find(match.group(0), match.end())
            j = n if end == -1 else end + len(match.group(0))
            out.append(Token(DOLLAR, sql[i:j]))
            i = start = j
        elif sql.startswith("--", i):
            flush(i)
            j = sql.find("\n", i)
            j = n if j == -1 else j
            out.append(Token(COMMENT, sql[i:j]))
            i = start = j
        elif sql.startswith("/*", i):
            flush(i)
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(Token(COMMENT, sql[i:j]))
            i = start = j
        elif ch == ";":
            flush(i)
            out.append(Token(CODE, ";"))
            i = start = i + 1
        elif ch == "\\" and (i == 0 or sql[i - 1] == "\n") and sql[start:i].strip() == "":
            flush(i)
            j = sql.find("\n", i)
            j = n if j == -1 else j
            out.append(Token(CODE, sql[i:j]))
            i = start = j
        else:
            i += 1
    flush(n)
    return out


def _ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def statements(sql: str) -> list[list[Token]]:
    """The statements of a script as token lists, comments and psql meta-commands left out."""
    out: list[list[Token]] = []
    current: list[Token] = []
    for token in tokens(sql):
        if token.kind == COMMENT:
            continue
        if token.kind == CODE and token.text.startswith("\\"):
            continue
        current.append(token)
        if token.kind == CODE and token.text == ";":
            out.append(current)
            current = []
    if any(t.text.strip() for t in current):
        out.append(current)
    return out


_DROPPED = re.compile(
    r"(SET|RESET|GRANT|REVOKE|SECURITY\s+LABEL|ALTER\s+DEFAULT\s+PRIVILEGES"
    r"|SELECT\s+pg_catalog\.set_config"
    r"|CREATE\s+SCHEMA|ALTER\s+SCHEMA|COMMENT\s+ON\s+SCHEMA)\b",
    re.IGNORECASE,
)
_OWNER = re.compile(r"\bOWNER\s+TO\b", re.IGNORECASE)


def _head(statement: Sequence[Token]) -> str:
    return "".join(t.text for t in statement).strip()


def _dropped(statement: Sequence[Token]) -> bool:
    head = _head(statement)
    if not head or head == ";":
        return True
    if _DROPPED.match(head):
        return True
    code = " ".join(t.text for t in statement if t.kind == CODE)
    return head.upper().startswith("ALTER ") and bool(_OWNER.search(code))


def _schema_patterns(
    schema: str,
) -> tuple[list[str], re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """How ``schema`` shows in a dump: its prefixes (quoted, and bare when that is the same
    name), the prefix in code, a mention anywhere, and the schema named as a schema."""
    quoted = quote_ident(schema)
    prefixes = [quoted + "."]
    if quoted.strip('"') == schema and _plain_identifier(schema):
        prefixes.append(schema + ".")
    code_prefix = re.compile(
        r"(?<![A-Za-z0-9_$.\"])(?:" + "|".join(re.escape(p) for p in prefixes) + ")"
    )
    mention = re.compile(
        r"(?<![A-Za-z0-9_$])(?:" + re.escape(schema) + "|" + re.escape(quoted) + r")\.",
        re.IGNORECASE,
    )
    # "WITH SCHEMA acme" (an extension), "SET SCHEMA acme": not a qualifier, not rewritable
    as_schema = re.compile(
        r"\bSCHEMA\s+(?:" + re.escape(quoted) + "|" + re.escape(schema) + r")(?![A-Za-z0-9_$.])",
        re.IGNORECASE,
    )
    return prefixes, code_prefix, mention, as_schema


def neutralize(sql: str, schema: str) -> tuple[str, list[str]]:
    """``pg_dump`` output of ``schema`` as SQL for any schema, and what needs a person's eye.

    Pure: no database. Returns the statements kept, one per paragraph, and warnings
    naming the statements whose literals or bodies mention the schema.
    """
    quoted = quote_ident(schema)
    prefixes, code_prefix, mention, as_schema = _schema_patterns(schema)
    kept: list[str] = []
    warnings: list[str] = []
    for statement in statements(sql):
        if _dropped(statement):
            continue
        parts: list[str] = []
        flagged = False
        for index, token in enumerate(statement):
            text = token.text
            if token.kind == CODE:
                text = code_prefix.sub("", text)
            elif token.kind == QUOTED and text == quoted:
                following = statement[index + 1] if index + 1 < len(statement) else None
                if following is not None and following.kind == CODE and following.text[:1] == ".":
                    # "schema".name: drop the name and the dot that follows it
                    statement[index + 1] = Token(CODE, following.text[1:])
                    continue
            elif token.kind == LITERAL:
                following = statement[index + 1] if index + 1 < len(statement) else None
                previous = parts[-1] if parts else ""
                is_reference = (
                    following is not None
                    and following.kind == CODE
                    and following.text.lstrip().lower().startswith("::reg")
                ) or previous.rstrip().lower().endswith("pg_catalog.setval(")
                inner = text[1:-1]
                if is_reference:
                    for prefix in prefixes:
                        if inner.startswith(prefix):
                            text = "'" + inner[len(prefix) :] + "'"
                            break
                elif mention.search(inner):
                    flagged = True
            elif token.kind == DOLLAR and mention.search(text):
                flagged = True
            parts.append(text)
        text = "".join(parts).strip()
        kept.append(text)
        if as_schema.search(text):
            first = text.splitlines()[0]
            warnings.append(f"names schema {schema!r} as a schema, left as is: {first}")
        elif flagged:
            first = text.splitlines()[0] if text else ""
            warnings.append(
                f"names schema {schema!r} inside a string or function body, left as is: {first}"
            )
    return "\n\n".join(kept) + ("\n" if kept else ""), warnings


def _plain_identifier(name: str) -> bool:
    return re.fullmatch(r"[a-z_][a-z0-9_$]*", name) is not None


def _pattern(name: str) -> str:
    """A pg_dump object pattern matching exactly ``name`` (quoted: no wildcards, any case)."""
    return '"' + name.replace('"', '""') + '"'


def dump_schema(
    url: str,
    schema: str,
    *,
    pg_dump: str,
    exclude_tables: Sequence[str] = (),
    data_tables: Sequence[str] = (),
) -> str:
    """Run ``pg_dump --schema-only`` on one schema; the password travels in the environment.

    With ``data_tables``, the rows of those tables instead (``INSERT`` statements with
    column names, and the positions of the sequences they own).
    """
    params = conninfo_to_dict(pgclient.libpq_url(url))
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    args = [
        pg_dump,
        "--no-owner",
        "--no-privileges",
        "--no-tablespaces",
        "--no-security-labels",
        f"--schema={_pattern(schema)}",
        f"--dbname={make_conninfo('', **params)}",
    ]
    if data_tables:
        args += ["--data-only", "--column-inserts", "--rows-per-insert=100"]
        args += [f"--table={_pattern(schema)}.{_pattern(t)}" for t in data_tables]
    else:
        args.append("--schema-only")
        args += [f"--exclude-table={_pattern(schema)}.{_pattern(t)}" for t in exclude_tables]
    try:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MtmError(f"could not run {pg_dump}: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit code {done.returncode}"
        raise MtmError(f"pg_dump of schema {schema!r} failed: {detail}")
    return done.stdout


def baseline(
    url: str,
    schema: str,
    *,
    ledger_table: str | None = None,
    pg_dump: str | None = None,
    data_tables: Sequence[str] = (),
) -> Baseline:
    """The structure of ``schema`` as schema-neutral SQL (see the module docstring).

    ``ledger_table`` (mtm's ledger in that schema) is left out. ``pg_dump`` is the
    program to use; by default one of the server's major version is looked for.
    ``data_tables`` names tables whose rows follow the structure as ``INSERT``s (for
    rows a legacy data migration put there), with the positions of their sequences.
    """
    with psycopg.connect(pgclient.libpq_url(url), autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
        version = int(row[0]) if row else 0
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
                (schema,),
            )
        }
    if found is None:
        raise MtmError(f"schema {schema!r} does not exist: name the reference schema to baseline")
    unknown = [t for t in data_tables if t not in tables or t == ledger_table]
    if unknown:
        raise MtmError(
            f"no table {', '.join(map(repr, unknown))} in schema {schema!r} to take rows from: "
            "name tables of the reference schema"
        )
    major = version // 10000
    program = pg_dump or find_pg_dump(major)
    if pg_dump is not None and pg_dump_version(pg_dump) != major:
        raise MtmError(
            f"{pg_dump} is not a pg_dump for PostgreSQL {major} "
            f"(it reports {pg_dump_version(pg_dump)}): pass one of the server's version"
        )
    dump = dump_schema(
        url, schema, pg_dump=program, exclude_tables=[ledger_table] if ledger_table else []
    )
    sql, warnings = neutralize(dump, schema)
    if data_tables:
        rows, _ = neutralize(
            dump_schema(url, schema, pg_dump=program, data_tables=list(data_tables)), schema
        )
        # Literals in rows are data: a value naming the schema is not worth a warning.
        sql = sql + "\n" + rows
    return Baseline(schema, sql, program, version, tuple(warnings))
