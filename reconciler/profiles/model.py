"""What a profile is: how one queue table maps onto the reconciler's lifecycle.

A profile names a table, its id and status columns, the value its status
column holds for each lifecycle state it has (a state it lacks is absent),
and the columns it has for the rest (heartbeat, attempts, finished-at, ...).
Three kinds exist: ``native`` (the reconciler's own ``jobs`` table, the
default), ``procrastinate`` (built in, reconciler/profiles/procrastinate.py)
and ``table`` (any other table, described in a TOML file,
reconciler/profiles/toml.py).

Nothing here touches the database; reconciler/profiles/live.py checks a
profile against the live catalog before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "COLUMN_ROLES",
    "LIFECYCLE",
    "Kind",
    "Profile",
    "ProfileError",
    "WorkerTable",
]

Kind = Literal["native", "procrastinate", "table"]

# The lifecycle states a profile may map, in the reconciler's words.
LIFECYCLE = ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled")

# The columns a profile may name, besides id and status, and what each is for.
COLUMN_ROLES: dict[str, str] = {
    "heartbeat": "the worker's last sign of life on the row (mark-stale)",
    "started_at": "when the running attempt began: the sign of life when no heartbeat came",
    "attempts": "attempts made (requeue, dead-letter)",
    "max_attempts": "attempts allowed per job (else retry.max_attempts, else the retry policy)",
    "finished_at": "when the job left running (backoff, retention)",
    "run_at": "when a queued job is due (set to now on a retry)",
    "priority": "the job's priority (lists, stats)",
    "queue": "the job's queue (lists, stats, --queue)",
    "kind": "the job's kind or task name (retry policy, --kind)",
    "tenant": "the job's tenant (lists, --tenant)",
    "error": "the last error (errors, jobs show)",
    "worker": "the worker that holds a running job (workers; the heartbeat table's key)",
    "created_at": "when the job was enqueued (lists)",
    "payload": "the job's arguments (jobs show)",
}


class ProfileError(Exception):
    """A profile is wrong; the message is one line naming the profile, the key and the fix."""


@dataclass(frozen=True)
class WorkerTable:
    """Where heartbeats live when they are not on the job's row (a workers table)."""

    schema: str
    table: str
    id: str  # the workers table's key, matched against the job's worker column
    heartbeat: str


@dataclass(frozen=True)
class Profile:
    """One queue table and how its rows move through the lifecycle."""

    name: str
    kind: Kind
    schema: str
    table: str
    id: str
    status: str
    states: Mapping[str, str]
    columns: Mapping[str, str] = field(default_factory=dict)
    # Attempts allowed when the table has no max_attempts column; None: the retry policy's.
    max_attempts: int | None = None
    # Who counts an attempt: the worker when it claims the job ("claim"), or when it
    # fails it ("failure"; then the reconciler counts the attempt of a crashed worker).
    attempts_counted: Literal["claim", "failure"] = "claim"
    worker_table: WorkerTable | None = None
    source: str = "built-in"

    @property
    def qualified(self) -> str:
        """schema.table, for people and the ledger."""
        return f"{self.schema}.{self.table}"

    def has(self, state: str) -> bool:
        return state in self.states

    def column(self, role: str) -> str | None:
        return self.columns.get(role)

    @property
    def finished_states(self) -> tuple[str, ...]:
        """The lifecycle states purge may delete, among those the table has."""
        return tuple(s for s in ("succeeded", "cancelled", "dead") if s in self.states)

    @property
    def exhausted_state(self) -> str:
        """Where a job with no attempts left goes: dead, else failed."""
        return "dead" if "dead" in self.states else "failed"

    def lifecycle_of(self, value: str) -> str | None:
        """The lifecycle state a status value stands for, or None."""
        for state, held in self.states.items():
            if held == value:
                return state
        return None
