"""Finds the SQL files and reads named queries out of them.

A task's SQL lives in ``sql/tasks/<task>.sql``; each query stands under a
``-- name: <query>`` header, and the text up to the next header is the query.
In a checkout the files are read from the top-level ``sql/`` folder; in an
installed wheel they ship as ``reconciler/sql``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

__all__ = ["SKIP_LOCKED", "data_dir", "locking", "migration_files", "queries", "query"]

_HEADER = re.compile(r"^--\s*name:\s*([a-z0-9_\-]+)\s*$", re.MULTILINE)
_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The folder ``sql`` or ``schedules``: inside the package when installed, else the repo's."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name}/ folder is missing from the reconciler installation")


@cache
def queries(file: str) -> dict[str, str]:
    """All named queries of ``sql/<file>.sql``."""
    path = data_dir("sql") / f"{file}.sql"
    text = path.read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    named = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}
    if not named:
        raise ValueError(f"{path} has no '-- name: ...' query")
    return named


def query(file: str, name: str) -> str:
    """One named query; a KeyError names the file and what it has."""
    found = queries(file)
    if name not in found:
        raise KeyError(f"sql/{file}.sql has no query {name!r} (it has {sorted(found)})")
    return found[name]


def migration_files() -> list[tuple[int, str, Path]]:
    """(version, name, path) of every migration, in order."""
    found = []
    for path in sorted((data_dir("sql") / "migrations").glob("*.sql")):
        version, _, name = path.stem.partition("_")
        found.append((int(version), name, path))
    return found


SKIP_LOCKED = "/*skip_locked*/"


def locking(sql: str, *, wait: bool) -> str:
    """``sql`` with its ``FOR UPDATE ... /*skip_locked*/`` made ``SKIP LOCKED``, or, when
    ``wait``, a plain ``FOR UPDATE`` that waits for a locked row up to the lock timeout.

    Tasks and bulk changes skip rows a worker holds (they come back to them next run); an
    operator who names job ids waits for those rows, so a job is never passed over silently.
    """
    if SKIP_LOCKED not in sql:
        raise KeyError(f"the query has no {SKIP_LOCKED} marker")
    return sql.replace(SKIP_LOCKED, "" if wait else "SKIP LOCKED")
