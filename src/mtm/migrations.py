"""Migration files on disk: discovery, namespaces, checksums, loading.

Two layouts are read: subfolders (``migrations/public/0001_x.sql``,
``migrations/tenant/0001_y.py``) and the original tool's flat layout with prefixes
(``migrations/tenant:1546110701000-create-table-A.py``). A migration's name is its
file name without the namespace prefix and the extension; within a namespace,
migrations run in name order.

The original tool's ``.js`` files are history (``legacy``): never run, recorded without
a checksum. A database adopted by ``mtm adopt`` has them all applied; a schema created
later records them as superseded by the namespace's baseline (a SQL file marked
``-- mtm:baseline``, which builds what they built) and runs that instead.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import inspect
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from . import sqlscript
from .errors import MigrationFileError

Namespace = Literal["public", "tenant"]
NAMESPACES: tuple[Namespace, ...] = ("public", "tenant")
EXTENSIONS = (".py", ".sql")
# The original multi-tenant-migrate tool's migrations: history, never run.
LEGACY_EXTENSIONS = (".js",)
# Files that may sit in a migrations folder without being migrations.
_IGNORED_SUFFIXES = {".md", ".txt", ".rst", ".pyc"}
_IGNORED_NAMES = {"__init__.py", "__pycache__"}

_DOWN_MARKER = re.compile(r"^\s*--\s*mtm:down\s*$", re.IGNORECASE | re.MULTILINE)
_NO_TX_MARKER = re.compile(r"^\s*--\s*mtm:no-transaction\s*$", re.IGNORECASE | re.MULTILINE)
BASELINE_MARKER = "-- mtm:baseline"
_BASELINE_MARKER = re.compile(r"^\s*--\s*mtm:baseline\s*$", re.IGNORECASE | re.MULTILINE)
# -- mtm:reference-table NAME: a public table made a Citus reference table (reference.py).
_REFERENCE_MARKER = re.compile(r"^[ \t]*--[ \t]*mtm:[ \t]*reference-table\b", re.I | re.M)


@dataclass(frozen=True)
class StepContext:
    """What a Python migration may ask about where it runs (its optional 2nd argument)."""

    schema: str
    namespace: Namespace
    tenant: str | None


@dataclass
class Migration:
    """One migration file of one namespace."""

    name: str
    namespace: Namespace
    path: Path
    checksum: str
    kind: Literal["sql", "python"]
    transactional: bool = True
    up_sql: str = ""
    down_sql: str | None = None
    # A .js file of the original tool: recorded (checksum NULL, adopted) but never run,
    # and only together with a baseline after it. Its ``checksum`` is "".
    legacy: bool = False
    # A SQL file marked ``-- mtm:baseline``: builds what the legacy files before it built.
    baseline: bool = False
    _module: ModuleType | None = field(default=None, repr=False)

    @property
    def has_down(self) -> bool:
        if self.kind == "sql":
            return self.down_sql is not None
        return callable(getattr(self.load(), "down", None))

    def load(self) -> ModuleType:
        """Import a Python migration once; import failures become MigrationFileError."""
        if self.kind != "python":
            raise TypeError("only Python migrations are loaded")
        if self._module is None:
            self._module = _import_file(self.path, self.namespace, self.name)
            if not callable(getattr(self._module, "up", None)):
                raise MigrationFileError(f"{self.path}: defines no up(op) function")
            self.transactional = bool(getattr(self._module, "transactional", True))
        return self._module

    def call(self, which: Literal["up", "down"], op: Any, ctx: StepContext) -> None:
        """Run a Python migration's up or down with Alembic's ``op`` (and the context)."""
        fn: Callable[..., Any] = getattr(self.load(), which)
        if _accepts_two(fn):
            fn(op, ctx)
        else:
            fn(op)


@dataclass
class MigrationSet:
    """Every migration of a project, per namespace, in run order."""

    directory: Path
    public: list[Migration]
    tenant: list[Migration]

    def of(self, namespace: Namespace) -> list[Migration]:
        return self.public if namespace == "public" else self.tenant

    def find(self, namespace: Namespace, name: str) -> Migration | None:
        for m in self.of(namespace):
            if m.name == name:
                return m
        return None

    def legacy(self, namespace: Namespace) -> list[Migration]:
        """The original tool's files of a namespace (history, never run)."""
        return [m for m in self.of(namespace) if m.legacy]

    def baseline(self, namespace: Namespace) -> Migration | None:
        """The namespace's newest baseline, if it has one."""
        found = [m for m in self.of(namespace) if m.baseline]
        return found[-1] if found else None

    def load_all(self) -> None:
        """Import every Python migration now, so a broken file stops a run before it starts."""
        for m in [*self.public, *self.tenant]:
            if m.kind == "python":
                m.load()

    def __iter__(self) -> Iterator[Migration]:
        yield from self.public
        yield from self.tenant


def discover(directory: Path, *, parse: bool = True) -> MigrationSet:
    """Read the migrations folder (both layouts) into a MigrationSet, or explain what is
    wrong. ``parse=False`` skips the checks that need PostgreSQL's parser (importing it
    costs 25-50 ms) for a command that runs no file (``status``)."""
    if not directory.is_dir():
        raise MigrationFileError(
            f"migrations directory {directory} does not exist (create it, or run 'mtm init')"
        )
    found: dict[Namespace, dict[str, Migration]] = {"public": {}, "tenant": {}}

    def add(migration: Migration) -> None:
        seen = found[migration.namespace].get(migration.name)
        if seen is not None:
            raise MigrationFileError(
                f"two {migration.namespace} migrations are named {migration.name!r}: "
                f"{seen.path} and {migration.path}"
            )
        found[migration.namespace][migration.name] = migration

    for entry in sorted(directory.iterdir()):
        if _ignored(entry):
            continue
        if entry.is_dir():
            if entry.name in NAMESPACES:
                ns: Namespace = "public" if entry.name == "public" else "tenant"
                for file in sorted(entry.iterdir()):
                    if _ignored(file) or file.is_dir():
                        continue
                    if file.suffix in LEGACY_EXTENSIONS:
                        add(_legacy_migration(file, ns, file.stem))
                        continue
                    if file.suffix not in EXTENSIONS:
                        raise MigrationFileError(
                            f"{file}: not a migration (expected a .py or .sql file)"
                        )
                    add(_read_migration(file, ns, file.stem, parse))
            elif any(p.suffix in EXTENSIONS for p in entry.rglob("*")):
                raise MigrationFileError(
                    f"{entry}: folder fits no namespace (use {directory / 'public'} "
                    f"or {directory / 'tenant'})"
                )
            continue
        if entry.suffix not in EXTENSIONS + LEGACY_EXTENSIONS:
            continue
        prefix, sep, rest = entry.name.partition(":")
        if not sep or prefix not in NAMESPACES:
            raise MigrationFileError(
                f"{entry}: fits no namespace (name it 'public:{entry.name}' or "
                f"'tenant:{entry.name}', or move it into public/ or tenant/)"
            )
        ns = "public" if prefix == "public" else "tenant"
        if entry.suffix in LEGACY_EXTENSIONS:
            add(_legacy_migration(entry, ns, Path(rest).stem))
        else:
            add(_read_migration(entry, ns, Path(rest).stem, parse))
    return MigrationSet(
        directory=directory,
        public=[found["public"][k] for k in sorted(found["public"])],
        tenant=[found["tenant"][k] for k in sorted(found["tenant"])],
    )


def refuse_unrunnable(migrations: Iterable[Migration]) -> None:
    """Refuse, exactly as ``discover`` does, any of ``migrations`` (read with
    ``parse=False``) that mtm cannot run as written."""
    for m in migrations:
        if m.kind == "sql" and not m.legacy:
            _read_migration(m.path, m.namespace, m.name, True)


def _ignored(path: Path) -> bool:
    return (
        path.name.startswith(".") or path.name in _IGNORED_NAMES or path.suffix in _IGNORED_SUFFIXES
    )


def _legacy_migration(path: Path, namespace: Namespace, name: str) -> Migration:
    """A file of the original tool: known by name, never read or run."""
    if not name:
        raise MigrationFileError(f"{path}: migration has an empty name")
    return Migration(name, namespace, path, "", "sql", legacy=True)


def _read_migration(path: Path, namespace: Namespace, name: str, parse: bool) -> Migration:
    if not name:
        raise MigrationFileError(f"{path}: migration has an empty name")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MigrationFileError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix == ".py":  # Python reads a BOM itself; the checksum stays the file's
        return Migration(name, namespace, path, hashlib.sha256(data).hexdigest(), "python")
    # A UTF-8 byte order mark (some Windows editors write one) is not SQL: PostgreSQL
    # would fail on it. It is left out of the checksum too, so adding or removing one is
    # not an edit; no applied file can have had one, so no recorded checksum changes.
    data = data.removeprefix(codecs.BOM_UTF8)
    checksum = hashlib.sha256(data).hexdigest()
    try:
        text = sqlscript.strip_bom(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise MigrationFileError(f"{path}: not UTF-8 text") from None
    transactional = _NO_TX_MARKER.search(text) is None
    marker = _DOWN_MARKER.search(text)
    up, down = (text, None) if marker is None else (text[: marker.start()], text[marker.end() :])
    if parse:
        _check_scripts(path, text, up, down, marker, transactional)
    migration = Migration(
        name,
        namespace,
        path,
        checksum,
        "sql",
        transactional=transactional,
        up_sql=up,
        down_sql=down,
        baseline=_BASELINE_MARKER.search(text) is not None,
    )
    if _REFERENCE_MARKER.search(text):
        from .reference import check_directives

        check_directives(migration, text)
    return migration


def _check_scripts(
    path: Path,
    text: str,
    up: str,
    down: str | None,
    marker: re.Match[str] | None,
    transactional: bool,
) -> None:
    """The up script (not empty) and the down script, if any, checked by the parser."""
    # A file may only make tables reference tables (-- mtm:reference-table, for Citus).
    if not _check_script(path, up, "up", 1, transactional) and not _REFERENCE_MARKER.search(up):
        raise MigrationFileError(f"{path}: the up script is empty")
    if marker is not None and down is not None:
        down_line = text.count("\n", 0, marker.end()) + 1
        _check_script(path, down, "down", down_line, transactional)


def _check_script(
    path: Path, script: str, which: str, first_line: int, transactional: bool
) -> list[sqlscript.Statement]:
    """Parse a script as PostgreSQL does and refuse what mtm cannot run as written.

    ``first_line`` is the file's line of the script's first line, for messages.
    """
    try:
        statements = sqlscript.split(script)
    except sqlscript.ScriptSyntaxError as exc:
        raise MigrationFileError(
            f"{path}:{first_line + exc.line - 1}: syntax error in the {which} script: {exc.message}"
        ) from None
    savepoints = sqlscript.Savepoints()
    for statement in statements:
        where = f"{path}:{first_line + statement.line - 1}: the {which} script contains "
        if transactional and savepoints.ends_transaction(statement):
            raise MigrationFileError(
                f"{where}{str(statement)!r}; mtm runs each migration in a transaction of its "
                "own and records it in that same transaction, so a migration must not begin, "
                "commit or roll back one (remove it, or mark the file '-- mtm:no-transaction' "
                "to run it statement by statement)"
            )
        if transactional and sqlscript.needs_no_transaction(statement):
            raise MigrationFileError(
                f"{where}{str(statement)!r}, which PostgreSQL cannot run inside a transaction; "
                "mark the file '-- mtm:no-transaction' to run it statement by statement "
                "(and make it safe to run again: IF NOT EXISTS, IF EXISTS)"
            )
        if sqlscript.client_copy(statement):
            raise MigrationFileError(
                f"{where}{str(statement)!r}; COPY FROM STDIN or TO STDOUT needs a data stream "
                "that mtm does not provide (use INSERT ... SELECT, or COPY with a file on the "
                "server)"
            )
    return statements


def _import_file(path: Path, namespace: str, name: str) -> ModuleType:
    safe = re.sub(r"\W", "_", name)
    module_name = f"mtm_migration_{namespace}_{safe}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise MigrationFileError(f"{path}: cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise MigrationFileError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        where = _last_frame_in(path, exc)
        raise MigrationFileError(
            f"{path}{where}: failed to import: {type(exc).__name__}: {exc}"
        ) from None
    sys.modules.pop(module_name, None)
    return module


def _last_frame_in(path: Path, exc: BaseException) -> str:
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    return f":{line}" if line else ""


def _accepts_two(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
