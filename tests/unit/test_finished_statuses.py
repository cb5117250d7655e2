"""The finished statuses are named in four places that must agree.

purge deletes what `reconciler purge` accepts (PURGEABLE) and what retention is set
for (Settings.retention); its SQL names the same statuses as constants so a generic
plan can use jobs_finished_idx, whose predicate names them too. A status added to one
and not the others would be purged through no index, or not at all.
"""

from __future__ import annotations

import re

from reconciler.ops.purge import PURGEABLE
from reconciler.settings import Settings
from reconciler.sqlfiles import data_dir, query

_IN_LIST = re.compile(r"status IN \(([^)]*)\)")


def _named(text: str) -> list[set[str]]:
    return [set(re.findall(r"'([a-z_]+)'", m)) for m in _IN_LIST.findall(text)]


def test_purge_retention_the_index_and_purge_sql_name_the_same_statuses() -> None:
    finished = set(PURGEABLE)
    assert set(Settings(_env_file=None).retention()) == finished  # type: ignore[call-arg]
    schema = (data_dir("sql") / "schema.sql").read_text(encoding="utf-8")
    index = schema[schema.index("CREATE INDEX jobs_finished_idx") :].split(";", 1)[0]
    assert _named(index) == [finished]
    for name in ("apply", "apply_partitioned"):
        assert finished in _named(query("tasks/purge", name)), name
