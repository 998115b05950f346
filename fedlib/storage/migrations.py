"""Versioned schemas: ``schema/<backend>/NN_name.sql`` applied in order at start-up.

The ``schema_version`` table holds one row, the version of the last file applied.
A database at a version newer than the newest file we ship was written by a newer
fedlib; we refuse to touch it rather than guess.
"""

from __future__ import annotations

import re
from importlib import resources

from fedlib.storage.interface import SchemaTooNewError
from fedlib.storage.sql import Cursor

_NAME = re.compile(r"^(\d+)_[A-Za-z0-9_]+\.sql$")


def schema_files(backend: str) -> list[tuple[int, str, str]]:
    """``(version, file name, SQL)`` for every schema file of ``backend``, in order."""
    folder = resources.files("fedlib.storage").joinpath("schema", backend)
    out = []
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort()
    return out


def split_statements(sql: str) -> list[str]:
    # Our schema files keep semicolons out of comments and literals, so a plain split
    # after dropping comment lines is exact.
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def latest_version(backend: str) -> int:
    files = schema_files(backend)
    return files[-1][0] if files else 0


def migrate(cur: Cursor, backend: str, target: int | None = None) -> int:
    """Bring the schema up to date (or up to ``target``, for tests of migrations)
    inside the caller's transaction; return the version reached."""
    cur.x("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    rows = cur.q("SELECT version FROM schema_version")
    current = int(rows[0][0]) if rows else 0
    files = schema_files(backend)
    newest = files[-1][0] if files else 0
    if current > newest:
        raise SchemaTooNewError(
            f"the database schema is at version {current} but this fedlib only knows "
            f"versions up to {newest}: it was written by a newer fedlib; upgrade fedlib "
            "or use another database"
        )
    for version, _name, sql in files:
        if version <= current or (target is not None and version > target):
            continue
        for stmt in split_statements(sql):
            cur.x(stmt)
        current = version
    if rows:
        cur.x("UPDATE schema_version SET version = ?", (current,))
    else:
        cur.x("INSERT INTO schema_version (version) VALUES (?)", (current,))
    return current
