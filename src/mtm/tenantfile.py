"""The file ``mtm export`` writes and ``mtm import`` reads: one tenant, self-described.

An uncompressed tar archive with two members, in this order:

* ``manifest.json``: what the dump cannot say (the registry row, the domains, the
  primary one first) and what the importer checks before it restores anything (the
  file format, mtm's tables version, the ledger table's name, the ledger itself with
  its fingerprint, the newest applied migration, the server and pg_dump versions);
* ``schema.dump``: ``pg_dump --format=custom`` of the tenant's schema (compressed by
  pg_dump), in UTF-8, without owners, privileges or tablespaces; the ledger is one of
  its tables.

The manifest is written from the same locked moment as the dump (``commands.transfer``)
and the import checks under its lock that the restored ledger is the manifest's.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UsageError

FORMAT = "mtm-tenant-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DUMP = "schema.dump"


@dataclass(frozen=True)
class Manifest:
    """What an export file says about its tenant (see the module docstring)."""

    schema: str
    name: str | None
    domains: list[str]  # the primary domain first
    tables_version: int
    ledger_table: str
    ledger: list[tuple[str, str | None]]  # (name, checksum) in name order
    fingerprint: str
    applied: str | None  # the newest applied migration
    server_version: int
    pg_dump_version: int
    exported_at: str
    created_at: str | None = None  # the registry row's, ISO 8601
    role: str | None = None  # the tenant's role in the source (not carried: roles are global)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        data = asdict(self)
        data["ledger"] = [{"name": n, "checksum": c} for n, c in self.ledger]
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write(path: Path, manifest: Manifest, dump: Path) -> None:
    """Write the export file next to its final place, then move it there: a failed
    export never leaves a half-written file under ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            data = manifest.to_json()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
            tar.add(str(dump), arcname=DUMP, recursive=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _not_an_export(path: Path, why: str) -> UsageError:
    return UsageError(
        f"{path} is not a tenant export of mtm ({why}): make one with 'mtm export TENANT FILE'"
    )


def read(path: Path, into: Path) -> tuple[Manifest, Path]:
    """The manifest of an export file, and its dump extracted into folder ``into``."""
    if not path.is_file():
        raise UsageError(f"no file {path}: name a file written by 'mtm export'")
    try:
        with tarfile.open(path, "r:") as tar:
            names = tar.getnames()
            if names[:2] != [MANIFEST, DUMP]:
                raise _not_an_export(path, f"it holds {', '.join(names[:3]) or 'nothing'}")
            member = tar.extractfile(MANIFEST)
            assert member is not None
            manifest = parse(path, member.read())
            source = tar.extractfile(DUMP)
            if source is None:
                raise _not_an_export(path, f"{DUMP} is not a file")
            target = into / DUMP
            with source, open(target, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
    except (tarfile.TarError, OSError) as exc:
        raise _not_an_export(path, str(exc) or type(exc).__name__) from None
    return manifest, target


def parse(path: Path, raw: bytes) -> Manifest:
    """A manifest from its JSON, refusing one of another format or format version."""
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise _not_an_export(path, "its manifest is not mtm's")
        if data.get("format_version") != FORMAT_VERSION:
            raise UsageError(
                f"{path} has export format version {data.get('format_version')!r}; this "
                f"mtm reads version {FORMAT_VERSION}: import it with the mtm that wrote it"
            )
        data["ledger"] = [(str(r["name"]), r["checksum"]) for r in data["ledger"]]
        return Manifest(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise _not_an_export(path, f"its manifest cannot be read: {exc}") from None
