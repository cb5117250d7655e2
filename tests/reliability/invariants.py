"""The checker: the README's seven invariants, each a named function over a History.

A :class:`History` is everything the database and the workers can tell:
``jobs``, ``job_events``, ``runs``, the rows purge deleted (kept by a witness
trigger, see :func:`install_witness`), and the workers' own records of every
call they made (see ``worker.py``), each stamped with the database clock.

Each invariant returns an :class:`InvariantResult` with what it checked, how
many violations it found and a few offending examples, so a failure says
which job, which attempt, and why. ``tests/reliability/test_invariants_checker.py``
breaks each one on purpose to show it can fail.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from reconciler.db import Database

__all__ = [
    "INVARIANTS",
    "Call",
    "CheckConfig",
    "Event",
    "History",
    "InvariantResult",
    "Run",
    "check_all",
    "events_replay_to_status",
    "every_job_accounted_for",
    "fencing_held",
    "format_report",
    "install_witness",
    "load_history",
    "no_overlap_while_alive",
    "no_overlapping_runs_or_double_transitions",
    "no_stale_while_fresh",
    "nothing_stuck",
    "read_operator_purged",
    "read_records",
]

STATUSES = frozenset(("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled"))
# Clocks of one server compared with each other: only rounding of the
# heartbeat_age_s reason (3 decimals) needs room.
EPSILON = timedelta(milliseconds=2)
EXAMPLES = 5


@dataclass(frozen=True)
class CheckConfig:
    """What the workload promised: the timeout, each task's interval, the slack allowed."""

    heartbeat_timeout: timedelta
    intervals: dict[str, timedelta]
    retention: dict[str, timedelta]
    # Room for a run that failed (a terminated connection, a lock timeout), a
    # loaded 2-core machine, and the length of a run itself.
    slack: timedelta = timedelta(seconds=8)


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    job_id: int
    from_status: str | None
    to_status: str
    at: datetime
    actor: str
    reason: dict[str, Any]
    run_id: int | None

    @property
    def attempt(self) -> int | None:
        value = self.reason.get("attempt")
        return int(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class Run:
    id: int
    task: str
    started_at: datetime
    finished_at: datetime | None
    status: str


@dataclass(frozen=True, slots=True)
class Call:
    """One line of a worker's records: a call it made and what it returned."""

    ev: str  # start, heartbeat, complete, fail, crash, killed
    job: int
    attempt: int
    worker: str
    at: datetime
    ok: bool = True


@dataclass(frozen=True, slots=True)
class JobRow:
    id: int
    status: str
    attempt: int
    max_attempts: int
    heartbeat_at: datetime | None
    locked_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PurgedJob:
    id: int
    status: str
    finished_at: datetime | None
    deleted_at: datetime


@dataclass(frozen=True, slots=True)
class Stay:
    """A time a job spent failed or stale, and the backoff it was owed then."""

    job_id: int
    status: str
    at: datetime
    left_at: datetime | None  # None: still there at the check
    next_status: str | None
    attempt: int  # attempts used of the budget in force (attempt - attempt_base)
    max_attempts: int
    delay: timedelta


@dataclass
class History:
    now: datetime
    config: CheckConfig
    jobs: dict[int, JobRow] = field(default_factory=dict)
    events: dict[int, list[Event]] = field(default_factory=dict)
    purged: dict[int, PurgedJob] = field(default_factory=dict)
    purged_events: dict[int, list[Event]] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    enqueued: set[int] = field(default_factory=set)
    transitions: set[tuple[str, str]] = field(default_factory=set)
    stays: list[Stay] = field(default_factory=list)
    # Each run's batches as the run itself committed them: run id -> moments (rel_batches).
    batches: dict[int, list[datetime]] = field(default_factory=dict)
    # Dead jobs an operator's `dead-letter purge` was asked to delete (after an export).
    operator_purged: set[int] = field(default_factory=set)

    def all_events(self, job_id: int) -> list[Event]:
        return self.events.get(job_id) or self.purged_events.get(job_id) or []

    def stale_events(self) -> dict[tuple[int, int], Event]:
        """Each attempt's stale mark by the reconciler's own mark-stale (not an operator's)."""
        found: dict[tuple[int, int], Event] = {}
        for evs in (*self.events.values(), *self.purged_events.values()):
            for e in evs:
                if (
                    e.to_status == "stale"
                    and e.attempt is not None
                    and e.actor.startswith("reconciler:")
                ):
                    found.setdefault((e.job_id, e.attempt), e)
        return found

    def taken_events(self) -> dict[tuple[int, int], Event]:
        """The event that took each attempt from its worker: the reconciler's stale mark,
        or an operator's cancel, reset-stuck or mark-succeeded of the running job."""
        found: dict[tuple[int, int], Event] = {}
        for evs in (*self.events.values(), *self.purged_events.values()):
            for e in evs:
                if (
                    e.from_status == "running"
                    and e.attempt is not None
                    and not e.actor.startswith("worker:")
                ):
                    found.setdefault((e.job_id, e.attempt), e)
        return found


@dataclass(frozen=True)
class InvariantResult:
    number: int
    name: str
    checked: int
    violations: int
    examples: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def line(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        head = (
            f"{'PASS' if self.ok else 'FAIL'}  {self.number}. {self.name}: "
            f"{self.checked} checked, {self.violations} violation(s)"
        )
        return head + (f" ({extra})" if extra else "")


class _Found:
    """Collects violations and keeps the first few as examples."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(message)


# --- recording -----------------------------------------------------------------------------

_WITNESS = """
CREATE TABLE IF NOT EXISTS rel_purged_jobs (
    id bigint PRIMARY KEY, status text NOT NULL, finished_at timestamptz,
    deleted_at timestamptz NOT NULL, deleted_by text NOT NULL,
    kind text NOT NULL, priority smallint NOT NULL, attempt integer NOT NULL,
    max_attempts integer NOT NULL);
CREATE TABLE IF NOT EXISTS rel_purged_events (LIKE job_events);
CREATE OR REPLACE FUNCTION rel_archive_job() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO rel_purged_jobs VALUES
        (OLD.id, OLD.status, OLD.finished_at, statement_timestamp(), session_user,
         OLD.kind, OLD.priority, OLD.attempt, OLD.max_attempts)
    ON CONFLICT (id) DO NOTHING;
    RETURN OLD;
END $$;
CREATE OR REPLACE FUNCTION rel_archive_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO rel_purged_events SELECT OLD.*;
    RETURN OLD;
END $$;
-- What each run really did, from its own batch transactions, not from runs.finished_at
-- (which a lease takeover rewrites): every statement that writes events with a run id,
-- and every lease renewal (each batch renews in its own transaction), leaves the run id
-- and the moment. Rolled-back batches leave nothing.
CREATE TABLE IF NOT EXISTS rel_batches (
    run_id bigint NOT NULL, task text, at timestamptz NOT NULL, pid integer NOT NULL);
CREATE OR REPLACE FUNCTION rel_witness_events() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO rel_batches (run_id, at, pid)
    SELECT DISTINCT n.run_id, clock_timestamp(), pg_backend_pid()
    FROM new_events n WHERE n.run_id IS NOT NULL;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION rel_witness_renewal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.run_id IS NOT NULL AND NEW.expires_at > OLD.expires_at
       AND NEW.holder = OLD.holder AND NEW.run_id IS NOT DISTINCT FROM OLD.run_id THEN
        INSERT INTO rel_batches (run_id, task, at, pid)
        VALUES (NEW.run_id, NEW.task, clock_timestamp(), pg_backend_pid());
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER rel_witness_events AFTER INSERT ON job_events
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT
    EXECUTE FUNCTION rel_witness_events();
CREATE OR REPLACE TRIGGER rel_witness_renewal AFTER UPDATE ON task_leases
    FOR EACH ROW EXECUTE FUNCTION rel_witness_renewal();
CREATE OR REPLACE TRIGGER rel_archive_job AFTER DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION rel_archive_job();
CREATE OR REPLACE TRIGGER rel_archive_event AFTER DELETE ON job_events
    FOR EACH ROW EXECUTE FUNCTION rel_archive_event();
"""


def install_witness(db: Database) -> None:
    """Keep a copy of every deleted job and event, so a purge can be proven lawful.

    Test instrumentation only, in the test's own schema: purge deletes a job's
    events with it, and invariant 1 needs them to prove the job was terminal
    and past its retention when it went.
    """
    with db.transaction() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute(_WITNESS)


def read_records(directory: Path) -> tuple[list[Call], set[int]]:
    """The workers' calls (``*.calls.jsonl``) and the enqueued ids (``*.enqueued``)."""
    calls: list[Call] = []
    enqueued: set[int] = set()
    for path in sorted(directory.glob("*.calls.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            calls.append(
                Call(
                    d["ev"],
                    int(d["job"]),
                    int(d["attempt"]),
                    d["worker"],
                    datetime.fromisoformat(d["at"]),
                    bool(d.get("ok", True)),
                )
            )
    for path in sorted(directory.glob("*.enqueued")):
        enqueued.update(int(x) for x in path.read_text().split())
    return calls, enqueued


def read_operator_purged(directory: Path) -> set[int]:
    """Job ids an operator's ``dead-letter purge`` was asked to delete (``operator.jsonl``,
    written by ``operator.py``): each after its export, so lawful at any age."""
    path = directory / "operator.jsonl"
    if not path.exists():
        return set()
    ids: set[int] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        if d["command"] == "dead-letter purge":
            ids.update(int(i) for i in d["ids"])
    return ids


_STAYS = """
WITH ev AS (
    SELECT e.job_id, e.to_status, e.at, e.reason,
           lead(e.at) OVER w AS left_at, lead(e.to_status) OVER w AS next_status,
           -- The start of the retry budget in force: an operator's requeue or replay
           -- moves it to the attempt then (attempt never goes down, so the latest
           -- is the largest); 0 until one does.
           coalesce(max(CASE WHEN (e.reason->>'attempts_reset')::boolean
                             THEN (e.reason->>'attempt_before')::int END)
                        OVER (w ROWS UNBOUNDED PRECEDING), 0) AS base
    FROM ({events}) e
    WINDOW w AS (PARTITION BY e.job_id ORDER BY e.id)
), j AS ({jobs})
SELECT ev.job_id, ev.to_status AS status, ev.at, ev.left_at, ev.next_status,
       coalesce((ev.reason->>'attempt')::int, j.attempt) - ev.base AS attempt, j.max_attempts,
       extract(epoch FROM coalesce(
           backoff(coalesce((ev.reason->>'attempt')::int, j.attempt) - ev.base,
                   p.initial_delay, p.max_delay, p.multiplier, p.jitter, j.id),
           interval '0'))::float8 AS delay_s
FROM ev
JOIN j ON j.id = ev.job_id
LEFT JOIN LATERAL policy_for(j.kind, j.priority) p ON true
WHERE ev.to_status IN ('failed', 'stale')
"""
_LIVE = {
    "events": "SELECT id, job_id, to_status, at, reason FROM job_events",
    "jobs": "SELECT id, kind, priority, attempt, max_attempts FROM jobs",
}
# With the witness: purged jobs' histories count too.
_WITH_PURGED = {
    "events": _LIVE["events"]
    + " UNION ALL SELECT id, job_id, to_status, at, reason FROM rel_purged_events",
    "jobs": _LIVE["jobs"]
    + " UNION ALL SELECT id, kind, priority, attempt, max_attempts FROM rel_purged_jobs",
}


def _event(row: Any) -> Event:
    reason = row.reason if isinstance(row.reason, dict) else json.loads(row.reason or "{}")
    return Event(
        int(row.id),
        int(row.job_id),
        row.from_status,
        row.to_status,
        row.at,
        row.actor,
        reason,
        row.run_id,
    )


def load_history(
    db: Database,
    config: CheckConfig,
    *,
    calls: Iterable[Call] = (),
    enqueued: Iterable[int] = (),
    operator_purged: Iterable[int] = (),
) -> History:
    """Read the schema of ``db`` (as a role that may read everything) into a History."""
    # One snapshot for every table read, so jobs, events and runs agree.
    with (
        db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
        conn.begin(),
    ):
        db.pin(conn)
        now = conn.execute(text("SELECT statement_timestamp()")).scalar_one()
        h = History(now=now, config=config)
        for r in conn.execute(
            text(
                "SELECT id, status, attempt, max_attempts, heartbeat_at, locked_at, updated_at"
                " FROM jobs"
            )
        ):
            h.jobs[r.id] = JobRow(
                r.id, r.status, r.attempt, r.max_attempts, r.heartbeat_at, r.locked_at, r.updated_at
            )
        events: dict[int, list[Event]] = defaultdict(list)
        for r in conn.execute(text("SELECT * FROM job_events ORDER BY job_id, id")):
            events[r.job_id].append(_event(r))
        h.events = dict(events)
        h.runs = [
            Run(r.id, r.task, r.started_at, r.finished_at, r.status)
            for r in conn.execute(
                text("SELECT id, task, started_at, finished_at, status FROM runs ORDER BY id")
            )
        ]
        h.transitions = {
            (r.from_status, r.to_status)
            for r in conn.execute(text("SELECT from_status, to_status FROM transitions"))
        }
        witness = conn.execute(
            text("SELECT to_regclass('rel_purged_jobs') IS NOT NULL")
        ).scalar_one()
        if witness:
            marks: dict[int, list[datetime]] = defaultdict(list)
            for r in conn.execute(text("SELECT run_id, at FROM rel_batches ORDER BY at")):
                marks[r.run_id].append(r.at)
            h.batches = dict(marks)
            for r in conn.execute(text("SELECT * FROM rel_purged_jobs")):
                h.purged[r.id] = PurgedJob(r.id, r.status, r.finished_at, r.deleted_at)
            purged_events: dict[int, list[Event]] = defaultdict(list)
            for r in conn.execute(text("SELECT * FROM rel_purged_events ORDER BY job_id, id")):
                purged_events[r.job_id].append(_event(r))
            h.purged_events = dict(purged_events)
        h.stays = [
            Stay(
                r.job_id,
                r.status,
                r.at,
                r.left_at,
                r.next_status,
                r.attempt,
                r.max_attempts,
                timedelta(seconds=r.delay_s),
            )
            for r in conn.execute(text(_STAYS.format(**(_WITH_PURGED if witness else _LIVE))))
        ]
    h.calls = sorted(calls, key=lambda c: c.at)
    h.enqueued = set(enqueued)
    h.operator_purged = set(operator_purged)
    return h


# --- the invariants -------------------------------------------------------------------------


def every_job_accounted_for(h: History) -> InvariantResult:
    """1. Every job ever enqueued is present in exactly one status, or was purged lawfully.

    Lawfully: it was terminal (succeeded, cancelled, dead) and had been so for
    longer than that status's retention when it was deleted, and its archived
    events end in that status.
    """
    found = _Found()
    present = purged = 0
    for job_id in sorted(h.enqueued | set(h.purged)):
        if job_id in h.jobs:
            present += 1
            if h.jobs[job_id].status not in STATUSES:
                found.add(f"job {job_id}: unknown status {h.jobs[job_id].status!r}")
            continue
        gone = h.purged.get(job_id)
        if gone is None:
            found.add(f"job {job_id}: enqueued, but neither present nor purged (lost)")
            continue
        purged += 1
        keep = h.config.retention.get(gone.status)
        if gone.status == "dead" and job_id in h.operator_purged:
            pass  # an operator's dead-letter purge, after its export: lawful at any age
        elif keep is None or gone.finished_at is None:
            found.add(f"job {job_id}: deleted while {gone.status} (not a terminal status)")
        elif gone.finished_at + keep > gone.deleted_at + EPSILON:
            found.add(
                f"job {job_id}: purged {gone.deleted_at - gone.finished_at} after it finished "
                f"{gone.status}, before its retention of {keep}"
            )
        evs = h.purged_events.get(job_id, [])
        if not evs or evs[-1].to_status != gone.status:
            found.add(f"job {job_id}: purged as {gone.status}, but its events do not end there")
    return InvariantResult(
        1,
        "every job accounted for",
        len(h.enqueued | set(h.purged)),
        found.count,
        tuple(found.examples),
        {"present": present, "purged": purged},
    )


@dataclass
class _Execution:
    job: int
    attempt: int
    worker: str
    start: datetime
    end: datetime
    last_alive: datetime  # the last call that proved it alive and in possession


def _executions(h: History) -> list[_Execution]:
    by_key: dict[tuple[int, int, str], _Execution] = {}
    for c in h.calls:
        key = (c.job, c.attempt, c.worker)
        ex = by_key.get(key)
        if ex is None:
            ex = by_key[key] = _Execution(c.job, c.attempt, c.worker, c.at, c.at, c.at)
        ex.start = min(ex.start, c.at) if c.ev == "start" else ex.start
        ex.end = max(ex.end, c.at)
        if c.ok and c.ev in ("start", "heartbeat"):
            ex.last_alive = max(ex.last_alive, c.at)
    return list(by_key.values())


def no_overlap_while_alive(h: History) -> InvariantResult:
    """2. No job ran on two workers at overlapping times unless the first was truly stale.

    Truly stale: the first attempt was marked stale before the second one
    started, and the first worker's last sign of life (its claim or its last
    accepted heartbeat, by its own records) was older than the timeout then.
    """
    found = _Found()
    taken = h.taken_events()
    operator_taken = 0
    per_job: dict[int, list[_Execution]] = defaultdict(list)
    for ex in _executions(h):
        per_job[ex.job].append(ex)
    overlaps = 0
    for job_id, exs in per_job.items():
        exs.sort(key=lambda e: e.start)
        for i, first in enumerate(exs):
            for second in exs[i + 1 :]:
                if second.start >= first.end:
                    continue
                overlaps += 1
                mark = taken.get((job_id, first.attempt))
                if mark is None or mark.at > second.start:
                    found.add(
                        f"job {job_id}: {first.worker} (attempt {first.attempt}) and "
                        f"{second.worker} (attempt {second.attempt}) overlapped, and attempt "
                        f"{first.attempt} was not marked stale before the second began"
                    )
                    continue
                if not mark.actor.startswith("reconciler:"):
                    operator_taken += 1  # an operator took it from a live worker: their call
                    continue
                timeout = timedelta(seconds=float(mark.reason.get("timeout_s", 0)))
                if first.last_alive > mark.at - timeout + EPSILON:
                    found.add(
                        f"job {job_id}: {first.worker} was alive at {first.last_alive}, "
                        f"{mark.at - first.last_alive} before it was marked stale "
                        f"(timeout {timeout}), and {second.worker} ran it meanwhile"
                    )
    return InvariantResult(
        2,
        "no job ran twice while alive",
        sum(len(x) for x in per_job.values()),
        found.count,
        tuple(found.examples),
        {
            "overlaps_after_stale": overlaps - found.count - operator_taken,
            "overlaps_after_operator": operator_taken,
        },
    )


def no_stale_while_fresh(h: History) -> InvariantResult:
    """3. No job whose heartbeat was younger than the timeout was ever marked stale.

    Checked from the event's reason (age >= timeout, timeout >= the configured
    one) and from the worker's records (no accepted claim or heartbeat of that
    attempt within the timeout before the mark).
    """
    found = _Found()
    alive: dict[tuple[int, int], list[datetime]] = defaultdict(list)
    for c in h.calls:
        if c.ok and c.ev in ("start", "heartbeat"):
            alive[(c.job, c.attempt)].append(c.at)
    marks = list(h.stale_events().values())
    for mark in marks:
        r = mark.reason
        try:
            timeout = timedelta(seconds=float(r["timeout_s"]))
            age = timedelta(seconds=float(r["heartbeat_age_s"]))
            last = datetime.fromisoformat(str(r["last_heartbeat_at"]))
        except (KeyError, TypeError, ValueError):
            found.add(f"job {mark.job_id}: stale event {mark.id} has an incomplete reason {r}")
            continue
        where = f"job {mark.job_id} attempt {mark.attempt} (event {mark.id})"
        if timeout + EPSILON < h.config.heartbeat_timeout:
            found.add(
                f"{where}: marked stale with timeout {timeout}, below {h.config.heartbeat_timeout}"
            )
        if age + EPSILON < timeout or last > mark.at - timeout + EPSILON:
            found.add(f"{where}: heartbeat {age} old at the mark, timeout {timeout}")
        fresh = [
            t
            for t in alive.get((mark.job_id, mark.attempt or 0), [])
            if mark.at - timeout + EPSILON < t <= mark.at
        ]
        if fresh:
            found.add(
                f"{where}: its worker's records show it alive at {max(fresh)}, "
                f"{mark.at - max(fresh)} before the mark (timeout {timeout})"
            )
    return InvariantResult(
        3, "never stale while fresh", len(marks), found.count, tuple(found.examples)
    )


def _replay(evs: Sequence[Event]) -> list[tuple[Event, int, str | None]]:
    """Each event with the attempt and holder in force just before it."""
    out: list[tuple[Event, int, str | None]] = []
    attempt: int = 0
    holder: str | None = None
    for e in evs:
        out.append((e, attempt, holder))
        if e.to_status == "running":
            attempt = e.attempt if e.attempt is not None else attempt + 1
            holder = e.actor
        elif e.from_status == "running":
            holder = None
    return out


def events_replay_to_status(h: History) -> InvariantResult:
    """4. One event per status change: replaying a job's events from queued gives its status.

    The first event is NULL -> queued; each next one starts where the last one
    ended and is a listed transition; the last one ends in the job's status;
    and there is one claim event per attempt.
    """
    found = _Found()
    for job_id, job in sorted(h.jobs.items()):
        evs = h.events.get(job_id, [])
        if not evs:
            found.add(f"job {job_id}: {job.status} with no events at all")
            continue
        if evs[0].from_status is not None or evs[0].to_status != "queued":
            found.add(f"job {job_id}: first event {evs[0].from_status} -> {evs[0].to_status}")
        for prev, e in itertools.pairwise(evs):
            if e.from_status != prev.to_status:
                found.add(
                    f"job {job_id}: event {e.id} ({e.from_status} -> {e.to_status}) follows "
                    f"event {prev.id} which ended in {prev.to_status}: a change without its "
                    "event, or an event without its change"
                )
            elif h.transitions and (e.from_status, e.to_status) not in h.transitions:
                found.add(f"job {job_id}: event {e.id} is not a listed transition")
        if evs[-1].to_status != job.status:
            found.add(
                f"job {job_id}: events replay to {evs[-1].to_status}, the job is {job.status}"
            )
        claims = sum(1 for e in evs if e.to_status == "running")
        if claims != job.attempt:
            found.add(f"job {job_id}: attempt {job.attempt}, but {claims} claim event(s)")
    orphans = set(h.events) - set(h.jobs)
    for job_id in sorted(orphans):
        found.add(f"job {job_id}: events for a job that does not exist")
    return InvariantResult(
        4,
        "events replay to the status",
        len(h.jobs),
        found.count,
        tuple(found.examples),
        {"events": sum(len(v) for v in h.events.values())},
    )


def fencing_held(h: History) -> InvariantResult:
    """5. No late worker changed a job after it was marked stale (or after anything else).

    From the events: every change a worker made was to an attempt it held
    (the previous event is its own claim of that attempt). From its records:
    no call of an attempt returned true after that attempt was taken from it
    (marked stale, or cancelled, reset or marked succeeded by an operator),
    and every complete/fail that returned true wrote exactly one event, every
    false one none.
    """
    found = _Found()
    checked = fenced = 0
    worker_events: dict[tuple[int, int, str, str], int] = defaultdict(int)
    for job_id in set(h.events) | set(h.purged_events):
        for e, attempt, holder in _replay(h.all_events(job_id)):
            if not e.actor.startswith("worker:") or e.from_status != "running":
                continue
            checked += 1
            worker_events[(job_id, e.attempt or 0, e.actor, e.to_status)] += 1
            if holder != e.actor or (e.attempt is not None and e.attempt != attempt):
                found.add(
                    f"job {job_id}: {e.actor} moved it {e.from_status} -> {e.to_status} "
                    f"(attempt {e.attempt}) while attempt {attempt} was held by {holder}"
                )
    taken = h.taken_events()
    # An operator's event carries its command's clock (read once, at the start), not the
    # moment its UPDATE committed: a call accepted in between was still the attempt's.
    # Such a take is final by the end of its run; the reconciler's own stale mark is
    # judged at its time, since mark-stale re-checks the heartbeat under the row lock.
    run_end = {r.id: r.finished_at for r in h.runs}
    for c in h.calls:
        if c.ev not in ("heartbeat", "complete", "fail"):
            continue
        checked += 1
        if not c.ok:
            fenced += 1
        mark = taken.get((c.job, c.attempt))
        final = mark.at if mark is not None else None
        if mark is not None and not mark.actor.startswith("reconciler:") and mark.run_id:
            final = run_end.get(mark.run_id) or mark.at
        if c.ok and mark is not None and final is not None and c.at > final:
            found.add(
                f"job {c.job}: {c.worker}'s {c.ev} of attempt {c.attempt} was accepted at "
                f"{c.at}, after {mark.actor} took the attempt ({mark.to_status}) at {mark.at}"
            )
        if c.ev in ("complete", "fail"):
            to = "succeeded" if c.ev == "complete" else "failed"
            n = worker_events.get((c.job, c.attempt, f"worker:{c.worker}", to), 0)
            if c.ok and n != 1:
                found.add(f"job {c.job}: {c.worker}'s {c.ev} returned true but wrote {n} events")
            if not c.ok and n:
                found.add(f"job {c.job}: {c.worker}'s {c.ev} returned false but wrote an event")
    return InvariantResult(
        5,
        "fencing held",
        checked,
        found.count,
        tuple(found.examples),
        {"late_calls_refused": fenced},
    )


def no_overlapping_runs_or_double_transitions(h: History) -> InvariantResult:
    """6. No task run overlapped another run of the same task, and no job moved twice for one cause.

    Overlap is judged by what each run really did: the moments its own batch
    transactions committed work or renewed its lease (the witness), not by
    ``runs.finished_at``, which a lease takeover rewrites. Two runs of one task
    overlap when one's batches fall between another's first and last. One
    cause: the same reconciler transition of the same job in the same attempt,
    or one run moving one job twice.
    """
    found = _Found()
    task_of = {r.id: r.task for r in h.runs}
    spans: dict[str, list[tuple[datetime, datetime, int]]] = defaultdict(list)
    for run_id, moments in h.batches.items():
        task = task_of.get(run_id)
        if task is not None and moments:
            spans[task].append((min(moments), max(moments), run_id))
    for task, runs in spans.items():
        runs.sort()
        latest: tuple[datetime, int] | None = None  # the latest last batch so far, its run
        for start, end, run_id in runs:
            if latest is not None and start < latest[0]:
                found.add(
                    f"{task}: run {run_id} committed a batch at {start}, before run "
                    f"{latest[1]}'s last batch at {latest[0]}"
                )
            if latest is None or end > latest[0]:
                latest = (end, run_id)
    unclosed = sum(1 for r in h.runs if r.finished_at is None)
    causes: dict[tuple[int, int, str | None, str], int] = defaultdict(int)
    per_run: dict[tuple[int, int], int] = defaultdict(int)
    moves = 0
    for job_id in set(h.events) | set(h.purged_events):
        for e, attempt, _ in _replay(h.all_events(job_id)):
            if e.run_id is not None:
                per_run[(job_id, e.run_id)] += 1
            if e.actor.startswith("reconciler:"):
                moves += 1
                causes[(job_id, attempt, e.from_status, e.to_status)] += 1
    for (job_id, attempt, frm, to), n in causes.items():
        if n > 1:
            found.add(f"job {job_id}: {frm} -> {to} {n} times in attempt {attempt}")
    for (job_id, run_id), n in per_run.items():
        if n > 1:
            found.add(f"job {job_id}: moved {n} times by run {run_id}")
    return InvariantResult(
        6,
        "no overlapping runs, no double transitions",
        len(h.runs) + moves,
        found.count,
        tuple(found.examples),
        {
            "runs": len(h.runs),
            "runs_with_batches": sum(len(v) for v in spans.values()),
            "unclosed_runs": unclosed,
            "reconciler_moves": moves,
        },
    )


def nothing_stuck(h: History) -> InvariantResult:
    """7. Nothing stays running without heartbeats, or failed/stale, longer than its bound.

    Running: marked stale within timeout + one mark-stale interval + slack of
    its last heartbeat (and, at the check, none is older than that). Failed or
    stale: requeued within backoff + one requeue interval + slack, or
    dead-lettered within one dead-letter interval + slack.
    """
    found = _Found()
    cfg = h.config
    run_bound = cfg.heartbeat_timeout + cfg.intervals["mark-stale"] + cfg.slack
    checked = 0
    for evs in (*h.events.values(), *h.purged_events.values()):
        for e in evs:
            if e.to_status != "stale" or "heartbeat_age_s" not in e.reason:
                continue
            checked += 1
            age = timedelta(seconds=float(e.reason["heartbeat_age_s"]))
            if age > run_bound:
                found.add(
                    f"job {e.job_id}: stayed running {age} after its last heartbeat "
                    f"(bound {run_bound})"
                )
    for job in h.jobs.values():
        if job.status != "running":
            continue
        checked += 1
        last = job.heartbeat_at or job.locked_at or job.updated_at
        if h.now - last > run_bound:
            found.add(
                f"job {job.id}: running with no heartbeat for {h.now - last} (bound {run_bound})"
            )
    for s in h.stays:
        checked += 1
        if s.attempt < s.max_attempts:
            bound = s.delay + cfg.intervals["requeue"] + cfg.slack
        else:
            bound = cfg.intervals["dead-letter"] + cfg.slack
        stayed = (s.left_at or h.now) - s.at
        if stayed > bound:
            found.add(
                f"job {s.job_id}: {s.status} for {stayed} (attempt {s.attempt}/{s.max_attempts}, "
                f"bound {bound}), then {s.next_status or 'still there'}"
            )
    return InvariantResult(7, "nothing stuck", checked, found.count, tuple(found.examples))


INVARIANTS: tuple[Callable[[History], InvariantResult], ...] = (
    every_job_accounted_for,
    no_overlap_while_alive,
    no_stale_while_fresh,
    events_replay_to_status,
    fencing_held,
    no_overlapping_runs_or_double_transitions,
    nothing_stuck,
)


def check_all(h: History) -> list[InvariantResult]:
    return [inv(h) for inv in INVARIANTS]


def format_report(results: Sequence[InvariantResult]) -> str:
    lines = []
    for r in results:
        lines.append(r.line())
        lines.extend(f"      e.g. {x}" for x in r.examples)
    return "\n".join(lines)
