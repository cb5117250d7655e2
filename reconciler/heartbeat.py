"""The heartbeat rule: when a running job's worker is presumed dead.

One definition, used by the mark-stale task, ``reconciler workers``,
``reconciler check`` and ``reconciler jobs``: a job's last sign of life is
its last heartbeat, else its claim (``sql/heartbeat.sql``: ``last_seen``);
its timeout is that of its kind, else of its queue, else
``RECONCILER_HEARTBEAT_TIMEOUT`` (``timeout_s``). A query writes the markers
``/*last_seen*/`` and ``/*heartbeat_timeout_s*/`` over ``jobs j``;
:func:`spliced` puts the rule in their place and :meth:`HeartbeatRule.binds`
gives the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["HeartbeatRule", "spliced"]

_MARKERS = {"/*last_seen*/": "last_seen", "/*heartbeat_timeout_s*/": "timeout_s"}


def spliced(sql: str) -> str:
    """``sql`` with the heartbeat rule's fragments in place of its markers."""
    for marker, name in _MARKERS.items():
        sql = sql.replace(marker, f"({query('heartbeat', name)})")
    return sql


@dataclass(frozen=True)
class HeartbeatRule:
    """The heartbeat timeouts in force: a default and overrides per kind and per queue."""

    default: timedelta
    kinds: dict[str, timedelta] = field(default_factory=dict)
    queues: dict[str, timedelta] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, *, only: timedelta | None = None) -> HeartbeatRule:
        """The configured rule; ``only`` replaces every timeout (``reset-stuck --older-than``)."""
        if only is not None:
            return cls(only)
        kinds: dict[str, timedelta] = {}
        queues: dict[str, timedelta] = {}
        for key, timeout in settings.heartbeat_timeout_overrides.items():
            scope, _, name = key.partition(":")
            (kinds if scope == "kind" else queues)[name] = timeout
        return cls(settings.heartbeat_timeout, kinds, queues)

    @property
    def shortest(self) -> timedelta:
        """The smallest timeout of any job: no job is presumed dead before this much silence."""
        return min([self.default, *self.kinds.values(), *self.queues.values()])

    def binds(self) -> dict[str, Any]:
        """The parameters of ``sql/heartbeat.sql``'s ``timeout_s`` (and ``min_timeout_s``)."""
        return {
            "default_timeout_s": self.default.total_seconds(),
            "min_timeout_s": self.shortest.total_seconds(),
            "kind_names": list(self.kinds),
            "kind_timeouts_s": [t.total_seconds() for t in self.kinds.values()],
            "queue_names": list(self.queues),
            "queue_timeouts_s": [t.total_seconds() for t in self.queues.values()],
        }
