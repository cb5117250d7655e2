"""Task leases: at most one run of a task at a time, across every replica.

A run takes its task's lease (a row in ``task_leases``) in the transaction
that records the run, renews it inside every batch transaction, and releases
it in the transaction that records the outcome. The lease expires
``RECONCILER_LEASE_TTL`` after its last renewal, by the database's clock, so a
process that dies (SIGKILL, a lost host) holds its tasks for at most that
long. The renewal is the fence: a batch whose renewal finds the lease expired
or taken rolls back whole, so a paused process that wakes up after losing its
lease cannot write anything.

Why rows and not ``pg_advisory_lock``: a session advisory lock belongs to a
server connection. Behind PgBouncer in transaction pooling mode, consecutive
transactions of one client use different server connections, so the lock
would be taken on one, "held" by whichever client gets that connection next,
and never released by us. A row written and read inside each transaction
needs no session state and behaves the same direct or pooled.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from reconciler.sqlfiles import query

__all__ = ["Lease", "LeaseLost", "TaskBusy", "acquire", "new_holder"]


class TaskBusy(Exception):
    """Another process holds the task's lease; nothing was done or recorded."""

    def __init__(self, task: str, holder: str, expires_at: datetime) -> None:
        self.task, self.holder, self.expires_at = task, holder, expires_at
        super().__init__(
            f"task {task} is running elsewhere (holder {holder}, "
            f"lease until {expires_at.isoformat(timespec='seconds')})"
        )


class LeaseLost(Exception):
    """The lease expired or passed to another process; the current batch rolls back."""


def new_holder() -> str:
    """``host:pid:token``: who holds a lease, unique per run."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass
class Lease:
    """A lease this process holds, and how to keep it."""

    task: str
    holder: str
    ttl: timedelta
    expires_at: datetime

    def _binds(self) -> dict[str, object]:
        return {"task": self.task, "holder": self.holder, "ttl_s": self.ttl.total_seconds()}

    def attach_run(self, conn: Connection, run_id: int) -> None:
        """Record which run holds the lease (for ``reconciler status``)."""
        conn.execute(text(query("leases", "attach_run")), {**self._binds(), "run_id": run_id})

    def renew(self, conn: Connection) -> None:
        """Extend the lease inside ``conn``'s transaction, or raise LeaseLost."""
        renewed = conn.execute(text(query("leases", "renew")), self._binds()).scalar_one_or_none()
        if renewed is None:
            raise LeaseLost(
                f"lost the lease of task {self.task} (it expired; RECONCILER_LEASE_TTL is "
                f"{self.ttl.total_seconds():g}s); the batch was rolled back"
            )
        self.expires_at = renewed

    def release(self, conn: Connection) -> None:
        conn.execute(text(query("leases", "release")), self._binds())


def acquire(conn: Connection, task: str, holder: str, ttl: timedelta) -> Lease:
    """Take ``task``'s lease in ``conn``'s transaction, or raise TaskBusy.

    Runs of the task left ``running`` by a process that lost the lease are
    closed as ``interrupted`` in the same transaction.
    """
    binds = {"task": task, "holder": holder, "ttl_s": ttl.total_seconds()}
    expires_at = conn.execute(text(query("leases", "acquire")), binds).scalar_one_or_none()
    if expires_at is None:
        current = conn.execute(text(query("leases", "current")), binds).one()
        raise TaskBusy(task, current.holder, current.expires_at)
    conn.execute(text(query("leases", "close_abandoned")), binds)
    return Lease(task, holder, ttl, expires_at)
