"""The backup rule of the dead letter: which dead jobs may be deleted without losing them.

A dead job counts as backed up while a *durable* export (``reconciler
dead-letter export --output FILE``: written, fsynced and renamed into place
before it was recorded) holds it unchanged since. ``sql/backup.sql`` states
the rule once; :func:`spliced` puts it where a query says ``/*backed_up*/``:
in the deleting statements of ``dead-letter purge`` and ``purge --status
dead`` (so it is checked under the delete's own row locks) and in their
preview, ``not_backed_up`` of ``sql/ops/dead_letter.sql`` (reconciler/ops/backed_up.py).
"""

from __future__ import annotations

from reconciler.sqlfiles import query

__all__ = ["MARKER", "spliced"]

MARKER = "/*backed_up*/"


def spliced(sql: str) -> str:
    """``sql`` with the backup rule in place of its ``/*backed_up*/`` marker."""
    if MARKER not in sql:
        raise KeyError(f"the query has no {MARKER} marker")
    return sql.replace(MARKER, f"({query('backup', 'backed_up')})")
