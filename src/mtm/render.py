"""The SQL a migration will run, written out before it runs (``mtm sql``, ``lint``).

A SQL migration is its statements. A Python migration is called with Alembic's ``op``
in Alembic's offline mode (``as_sql``): every operation is compiled for PostgreSQL and
written out instead of executed, values inlined. What offline mode cannot show is work
that needs the database's answers: a migration that reads the result of a query sent
through ``op.get_bind()`` (or fails for any other reason while rendered) is rendered up
to that point, followed by a ``-- mtm: ... cannot be rendered`` marker and a statement
that raises, so the script cannot be replayed as if it were complete.

Each migration comes in the frame mtm runs it in, without mtm's own bookkeeping (lock,
ledger and state rows): ``BEGIN``, the ``SET LOCAL`` settings, the body, ``COMMIT``;
a no-transaction migration with session settings and no frame; a ``.js`` file of the
original tool (never run) as a comment saying it is not rendered. Rendered for no tenant
in particular, the search path is the psql variable ``:"schema"`` (``psql -v
schema=acme``), which psql quotes as an identifier; a Python migration then sees
``':"schema"'`` as its schema and tenant.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import sqlscript, steps
from .config import Config
from .identifiers import quote_literal
from .migrations import Migration, StepContext
from .reference import directive_sql, register_op
from .steps import Direction, Timeouts
from .words import plural

# The search path of a tenant migration rendered for no tenant in particular: a psql
# variable, substituted (quoted as an identifier) by ``psql -v schema=NAME``.
NEUTRAL_SCHEMA = ':"schema"'
MARKER = "-- mtm:"


class Unrenderable(BaseException):
    """A Python migration needs the database's answer; raised through the migration.

    A BaseException, so that a migration's ``except Exception`` does not swallow it.
    """


@dataclass(frozen=True)
class Rendered:
    """One migration's SQL for one schema (``None``: no tenant in particular).

    ``unrendered`` says why the rest of a Python migration could not be written out;
    ``notes`` are other warnings shown with it.
    """

    migration: Migration
    schema: str | None
    body: str
    unrendered: str | None = None
    notes: tuple[str, ...] = ()

    def statements(self) -> list[sqlscript.Statement]:
        """The body read with PostgreSQL's grammar (what ``lint`` looks at)."""
        return sqlscript.split(self.body) if self.body.strip() else []


def render(migration: Migration, schema: str | None, which: Direction = "up") -> Rendered:
    """The body of ``migration`` for ``schema``: its SQL, or its Python rendered offline."""
    if migration.kind == "sql":
        sql = migration.up_sql if which == "up" else migration.down_sql or ""
        made = directive_sql(migration) if which == "up" else []
        return Rendered(migration, schema, _terminated("\n;\n".join([sql, *made])))
    return _render_python(migration, schema, which)


def script(config: Config, rendered: Rendered) -> str:
    """The migration in the frame mtm runs it in, with a comment naming it."""
    m = rendered.migration
    where = "no tenant in particular" if rendered.schema is None else f"schema {rendered.schema}"
    # On one line whatever the file is called: a newline in a name would end the comment.
    title = " ".join(f"{m.namespace} migration {m.name} ({m.path.name}) for {where}".split())
    lines = [f"-- {title}"]
    if m.legacy:  # nothing to show: recorded as superseded by the baseline, never run
        lines.append(f"{MARKER} legacy, not rendered: a file of the original tool is never run")
        return "\n".join(lines) + "\n"
    lines += [f"{MARKER} {note}" for note in rendered.notes]
    timeouts = Timeouts(config.lock_timeout, config.statement_timeout)
    target = rendered.schema or "public"
    if m.transactional:
        head = steps.frame(config, target, m.namespace, timeouts=timeouts).head
        settings = [s for s in head if s.startswith("SET LOCAL")]
        before, after = ["BEGIN", *_neutral(settings, rendered.schema)], ["COMMIT"]
    else:
        before = _neutral(steps.session_settings(target, timeouts), rendered.schema)
        after = list(steps.RESET_SETTINGS)
    lines += [f"{s};" for s in before]
    if rendered.body.strip():
        lines.append(rendered.body)
    if rendered.unrendered is not None:
        lines += [
            f"{MARKER} {m.name} cannot be rendered from here on: {rendered.unrendered}",
            f"{MARKER} the statements above are what it sends before that; the rest is "
            "decided by what the database answers, so this script stops here",
            "DO $mtm$ BEGIN RAISE EXCEPTION "
            + quote_literal(f"mtm: {m.name} cannot be rendered as SQL; run it with mtm migrate")
            + "; END $mtm$;",
        ]
    lines += [f"{s};" for s in after]
    return "\n".join(lines) + "\n"


def _neutral(settings: list[str], schema: str | None) -> list[str]:
    """The settings with the search path of a schema, or the psql variable for none."""
    if schema is not None:
        return settings
    out = []
    for s in settings:
        if "search_path TO" in s:
            s = s[: s.index("search_path TO")] + f"search_path TO {NEUTRAL_SCHEMA}"
        out.append(s)
    return out


def _terminated(sql: str) -> str:
    """The statements of a script, each ended with ``;`` (comments between them go).

    A statement may end in a ``--`` comment (its text runs to the ``;``): the ``;``
    then goes on a line of its own, or the comment would swallow it.
    """
    if not sql.strip():
        return ""
    out = []
    for statement in sqlscript.split(sql):
        last_line = statement.text.rsplit("\n", 1)[-1]
        out.append(statement.text + ("\n;" if "--" in last_line else ";"))
    return "\n".join(out)


def _render_python(migration: Migration, schema: str | None, which: Direction) -> Rendered:
    """Call the migration with an offline ``op`` writing PostgreSQL's SQL to a buffer."""
    from alembic.runtime.migration import MigrationContext

    register_op()
    buffer = _Output()
    ctx = MigrationContext.configure(
        dialect_name="postgresql",
        # Named parameters: with psycopg's %-style, a % in the SQL would be written twice.
        dialect_opts={"paramstyle": "named"},
        opts={"as_sql": True, "literal_binds": True, "output_buffer": buffer},
    )
    name = schema or NEUTRAL_SCHEMA
    tenant = name if migration.namespace == "tenant" else None
    unrendered = None
    try:
        op = _offline_operations(ctx)
        migration.call(which, op, StepContext(name, migration.namespace, tenant))
    except Unrenderable as exc:
        unrendered = str(exc)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        unrendered = f"rendering it offline failed: {type(exc).__name__}: {first}".rstrip(": ")
    body = buffer.getvalue().strip()
    notes: tuple[str, ...] = ()
    if migration.transactional and body:
        try:
            ended = sqlscript.transaction_control(sqlscript.split(body))
        except sqlscript.ScriptSyntaxError:
            ended = None  # shown as rendered; lint says it cannot read it
        if ended is not None:
            notes = (
                f"{migration.name} sends {str(ended)!r}, which mtm refuses inside its "
                "transaction (give it 'transactional = False')",
            )
    return Rendered(migration, schema, body, unrendered, notes)


class _Output(io.StringIO):
    """Where Alembic writes each statement, ``;`` and a blank line: a ``;`` after a
    ``--`` comment goes on a line of its own, or the comment would swallow it."""

    def write(self, text: str) -> int:
        statement = text.removesuffix(";\n\n")
        if statement != text and "--" in statement.rsplit("\n", 1)[-1]:
            text = statement + "\n;\n\n"
        return super().write(text)


def _offline_operations(ctx: Any) -> Any:
    """Alembic's ``Operations`` whose ``get_bind()`` writes statements out and refuses
    to answer: the results of a query do not exist offline."""
    from alembic.operations import Operations

    class OfflineOperations(Operations):
        def get_bind(self) -> Any:
            return _OfflineBind(self)

    return OfflineOperations(ctx)


class _OfflineBind:
    """The connection a migration gets from ``op.get_bind()`` when rendered offline:
    what it executes is written out like ``op.execute`` (values inlined); anything else
    it is asked needs the database."""

    def __init__(self, op: Any) -> None:
        self._op = op
        self.dialect = op.migration_context.dialect

    def execute(self, statement: Any, parameters: Any = None, **_: Any) -> _NoResult:
        import sqlalchemy as sa

        if isinstance(statement, str):
            statement = sa.text(statement)
        many = parameters if isinstance(parameters, list) else [parameters or {}]
        for one in many:
            if one and isinstance(statement, sa.TextClause):
                self._op.execute(statement.bindparams(**one))  # typed from the values
            else:
                self._op.execute(statement.params(**one) if one else statement)
        return _NoResult(" ".join(str(statement).split())[:60])

    def exec_driver_sql(self, statement: str, *_: Any, **__: Any) -> _NoResult:
        return self.execute(statement)

    def __getattr__(self, name: str) -> Any:
        raise Unrenderable(f"it uses op.get_bind().{name}, which needs the database")


class _NoResult:
    """The result of a statement sent offline: there is none to read."""

    def __init__(self, statement: str) -> None:
        self._statement = statement

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise Unrenderable(
            f"it reads the result of {self._statement!r} through op.get_bind(), "
            "data work that needs the database"
        )

    def __getattr__(self, name: str) -> Any:
        return self._refuse

    def __iter__(self) -> Any:
        return self._refuse()

    def __bool__(self) -> bool:
        return bool(self._refuse())


@dataclass(frozen=True)
class Section:
    """Migrations rendered for a group of schemas with the same plan (``schemas``; the
    first one's name is used when it is alone, the psql variable otherwise)."""

    namespace: str
    schemas: tuple[str, ...]
    rendered: tuple[Rendered, ...]


def text(config: Config, sections: Sequence[Section], shown: int = 10) -> str:
    """Every section's scripts; a section for several schemas under a comment naming
    them (its scripts name the psql variable, not one of them)."""
    out = []
    for section in sections:
        names = list(section.schemas[:shown])
        more = len(section.schemas) - len(names)
        listed = ", ".join(names) + (f" and {more} more" if more > 0 else "")
        if len(section.schemas) > 1:
            count = plural(len(section.schemas), f"{section.namespace} schema")
            out.append(f"{MARKER} {count} with this plan: {listed}")
            out.append(f"{MARKER} run it for one of them with: psql -v schema=NAME -f FILE")
        out += [script(config, r) for r in section.rendered]
    return "\n".join(out)
