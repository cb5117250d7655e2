"""``reconciler demo``: watch the reconciler keep a busy, unreliable queue healthy.

It builds a schema of its own (``reconciler_demo``; dropped and rebuilt, so
the name must contain "demo"), enqueues jobs, and runs simulated workers
through the worker SQL API (claim, heartbeat, complete, fail). Some workers
fail jobs, some crash mid-job (they stop heartbeating and vanish). The
daemon's own scheduler runs the five tasks on accelerated schedules with a
2 s heartbeat timeout, so within seconds crashed jobs go stale, get retried
with backoff, and jobs out of attempts are dead-lettered.

A terminal gets a live view (rich); anything else gets a plain line every few
seconds; ``--json`` prints only the summary, as one JSON object. After
``--duration`` the workers finish their current job, the daemon stops as on
SIGTERM, and the summary accounts for every job enqueued: each one is in the
table, in a status its own history ends in. Exit 0 when that holds, 1 if not.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from reconciler.app import Target, open_database
from reconciler.daemon import Daemon
from reconciler.db import Database, quote_ident
from reconciler.durations import format_duration
from reconciler.migrate import migrate
from reconciler.schedule import Entry, Schedule
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["DEMO_SCHEDULE", "run_demo"]

STATUSES = ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled")
WORKERS = 4
# Accelerated: every few seconds something is due, so a minute shows every path.
DEMO_SCHEDULE = Schedule(
    Path("(demo schedule)"),
    (
        Entry("mark-stale", every=timedelta(seconds=1)),
        Entry("requeue", every=timedelta(seconds=1)),
        Entry("dead-letter", every=timedelta(seconds=2)),
        Entry("purge", every=timedelta(seconds=10)),
        Entry("vacuum-analyze", every=timedelta(seconds=10)),
    ),
)
# Share of claimed jobs that fail, and that crash their worker, while the demo
# is in its rough phase (the first 70 %); afterwards every job succeeds, so the
# queue visibly drains before the summary.
FAIL_RATE, CRASH_RATE = 0.2, 0.1


@dataclass
class Tally:
    """What the simulated side did (thread-safe)."""

    counts: Counter[str] = field(default_factory=Counter)
    enqueued: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def enqueued_ids(self, ids: list[int]) -> None:
        with self.lock:
            self.enqueued.extend(ids)


class Simulation:
    """The producer and the workers, on their own threads."""

    def __init__(self, db: Database, duration: timedelta, seed: int | None = None) -> None:
        self.db = db
        self.duration = duration.total_seconds()
        self.started = time.monotonic()
        self.stop_claiming = threading.Event()
        self.tally = Tally()
        self.random = random.Random(seed)
        self.threads = [threading.Thread(target=self._produce, name="demo-producer", daemon=True)]
        self.threads += [
            threading.Thread(target=self._work, args=(f"w{i + 1}",), name=f"demo-w{i + 1}")
            for i in range(WORKERS)
        ]

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rough(self) -> bool:
        return self.elapsed() < 0.7 * self.duration

    def start(self) -> None:
        self._enqueue(30)
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Workers finish the job in hand, then stop; nobody enqueues any more."""
        self.stop_claiming.set()
        for thread in self.threads[1:]:
            thread.join(timeout=10)

    def _enqueue(self, n: int) -> None:
        ids = []
        with self.db.transaction() as conn:
            for _ in range(n):
                priority = self.random.choice((1, 2, 2, 2, 3, 4))
                ids.append(
                    conn.execute(
                        text(query("demo", "enqueue")),
                        {
                            "kind": self.random.choice(("email", "thumbnail", "export")),
                            "priority": priority,
                            "queue": "default",
                        },
                    ).scalar_one()
                )
        self.tally.enqueued_ids(ids)
        self.tally.add("enqueued", n)

    def _produce(self) -> None:
        while self.elapsed() < 0.5 * self.duration and not self.stop_claiming.wait(0.5):
            try:
                self._enqueue(2)
            except SQLAlchemyError:
                self.tally.add("producer_errors")

    def _call(self, name: str, **binds: Any) -> Any:
        with self.db.transaction() as conn:
            return conn.execute(text(query("demo", name)), binds).first()

    def _work(self, base: str) -> None:
        rng = random.Random(self.random.random())
        incarnation = 1
        worker = f"{base}.{incarnation}"
        while not self.stop_claiming.is_set():
            try:
                job = self._call("claim", worker=worker)
                if job is None:
                    self.stop_claiming.wait(0.1)
                    continue
                self.tally.add("claimed")
                fate = rng.random() if self.rough() else 1.0
                if fate < CRASH_RATE:
                    # Crash mid-job: no heartbeat, no report. The worker "restarts".
                    self.tally.add("crashed")
                    incarnation += 1
                    worker = f"{base}.{incarnation}"
                    continue
                self._do(job, worker, rng.uniform(0.2, 1.0))
                if fate < CRASH_RATE + FAIL_RATE:
                    error = json.dumps({"message": "upstream timed out"})
                    self._call("fail", id=job.id, token=job.claim_token, error=error)
                    self.tally.add("failed")
                else:
                    self._call("complete", id=job.id, token=job.claim_token)
                    self.tally.add("completed")
            except SQLAlchemyError:
                self.tally.add("worker_errors")
                self.stop_claiming.wait(0.5)

    def _do(self, job: Any, worker: str, seconds: float) -> None:
        """'Work' for ``seconds``, heartbeating every half second."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.5, left))  # simulated work, not a test waiting
            self._call("heartbeat", id=job.id, token=job.claim_token)


# --- views ---------------------------------------------------------------------------------


def _snapshot(db: Database) -> dict[str, Any]:
    with db.transaction() as conn:
        counts = {row.status: int(row.n) for row in conn.execute(text(query("demo", "counts")))}
        recent = [dict(r._mapping) for r in conn.execute(text(query("demo", "recent")), {"n": 8})]
        moved = {r.transition: int(r.n) for r in conn.execute(text(query("demo", "moved")))}
        runs = [dict(r._mapping) for r in conn.execute(text(query("demo", "last_runs")))]
    return {
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "recent": recent,
        "moved": moved,
        "runs": runs,
    }


def _live(sim: Simulation, snap: dict[str, Any], target: Target) -> Group:
    elapsed = min(sim.elapsed(), sim.duration)
    phase = "workers fail and crash" if sim.rough() else "workers behave: the queue drains"
    head = Text.from_markup(
        f"[bold]reconciler demo[/] on {target.describe()}  "
        f"{elapsed:4.0f}s / {sim.duration:.0f}s  ({phase})"
    )
    states = Table(title="jobs by status", box=None)
    states.add_column("status")
    states.add_column("jobs", justify="right")
    states.add_column("")
    total = max(sum(snap["counts"].values()), 1)
    for status, n in snap["counts"].items():
        states.add_row(status, str(n), "█" * round(30 * n / total))
    runs = Table(title="the reconciler's tasks (last run)", box=None)
    for column in ("task", "runs", "last", "changed"):
        runs.add_column(column)
    for r in snap["runs"]:
        runs.add_row(r["task"], str(r["runs"]), r["status"], str(sum(r["transitions"].values())))
    recent = Table(title="recent transitions by the reconciler", box=None)
    for column in ("job", "transition", "by"):
        recent.add_column(column)
    for e in snap["recent"]:
        recent.add_row(str(e["job_id"]), f"{e['from_status']} -> {e['to_status']}", e["actor"])
    c = sim.tally.counts
    workers = Text(
        f"workers: {c['claimed']} claimed, {c['completed']} completed, {c['failed']} failed, "
        f"{c['crashed']} crashed mid-job (stopped heartbeating)"
    )
    return Group(head, states, workers, runs, recent)


def _plain_line(sim: Simulation, snap: dict[str, Any]) -> str:
    counts = " ".join(f"{s}={n}" for s, n in snap["counts"].items())
    moved = ", ".join(f"{t} {n}" for t, n in snap["moved"].items()) or "nothing yet"
    return f"demo t={sim.elapsed():.0f}s {counts} | crashed={sim.tally.counts['crashed']} | {moved}"


# --- the command ---------------------------------------------------------------------------


def run_demo(settings: Settings, *, duration: timedelta, as_json: bool, schema: str) -> int:
    """Run the demo; the exit code. ValueError for a bad schema name or URL."""
    if "demo" not in schema:
        raise ValueError(
            f"the demo drops and rebuilds its schema; {schema!r} does not look like a demo's "
            "(use a name containing 'demo')"
        )
    if duration < timedelta(seconds=3):
        raise ValueError("--duration must be at least 3s")
    # The demo narrates its dead letters itself; a job.dead_lettered line per job
    # would tear through its live view.
    signals_log = logging.getLogger("reconciler.signals")
    level = signals_log.level
    signals_log.setLevel(logging.ERROR)
    try:
        return _run_demo(settings, duration=duration, as_json=as_json, schema=schema)
    finally:
        signals_log.setLevel(level)


def _run_demo(settings: Settings, *, duration: timedelta, as_json: bool, schema: str) -> int:
    demo_settings = Settings(
        **{
            **settings.model_dump(),
            "schema_name": schema,
            # Fast enough to watch: a crashed worker's job is stale within 2-3 s.
            "heartbeat_timeout": timedelta(seconds=2),
            "run_time_budget": timedelta(seconds=5),
            "shutdown_grace": timedelta(seconds=10),
            "retry_max_delay": timedelta(seconds=5),
        }
    )
    if settings.log_level != "debug":
        # The live view is the output; the daemon's lines would tear it.
        logging.getLogger("reconciler").setLevel(logging.WARNING)
    db, target = open_database(demo_settings, application_name="reconciler demo", pool_size=12)
    try:
        db.ping()
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        migrate(db)
        return _run(db, target, demo_settings, duration, as_json)
    finally:
        db.dispose()


def _run(
    db: Database, target: Target, settings: Settings, duration: timedelta, as_json: bool
) -> int:
    out = Console(soft_wrap=True, highlight=False)
    sim = Simulation(db, duration)
    daemon = Daemon(settings, DEMO_SCHEDULE, db)
    sim.start()
    daemon.start()
    deadline = time.monotonic() + duration.total_seconds()
    try:
        if as_json:
            time.sleep(duration.total_seconds())  # nothing to show until the summary
        elif out.is_terminal:
            with Live(_live(sim, _snapshot(db), target), console=out, refresh_per_second=4) as live:
                while time.monotonic() < deadline:
                    time.sleep(0.25)
                    live.update(_live(sim, _snapshot(db), target))
        else:
            every = max(1.0, min(5.0, duration.total_seconds() / 6))
            out.print(f"reconciler demo on {target.describe()} for {format_duration(duration)}")
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(every, left))
                out.print(_plain_line(sim, _snapshot(db)))
    except KeyboardInterrupt:
        pass  # the summary is still worth seeing
    finally:
        sim.stop()
        daemon.stop(settings.shutdown_grace)
    summary = _summary(db, sim, target, settings.schema_name)
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        _print_summary(out, summary)
    return 0 if summary["all_accounted_for"] else 1


def _summary(db: Database, sim: Simulation, target: Target, schema: str) -> dict[str, Any]:
    snap = _snapshot(db)
    with db.transaction() as conn:
        ids = [int(i) for i in conn.execute(text(query("demo", "job_ids"))).scalars()]
        mismatches = int(conn.execute(text(query("demo", "history_mismatches"))).scalar_one())
    enqueued = sorted(sim.tally.enqueued)
    missing = sorted(set(enqueued) - set(ids))
    return {
        "database": target.describe(),
        "schema": schema,
        "duration_s": round(sim.elapsed(), 1),
        "enqueued": len(enqueued),
        "jobs_by_status": snap["counts"],
        "missing": missing,
        "history_mismatches": mismatches,
        "all_accounted_for": not missing and mismatches == 0 and len(ids) == len(enqueued),
        "workers": dict(sim.tally.counts),
        "reconciler_transitions": snap["moved"],
        "task_runs": {r["task"]: int(r["runs"]) for r in snap["runs"]},
    }


def _print_summary(out: Console, s: dict[str, Any]) -> None:
    verdict = (
        "[green]every one is accounted for[/]"
        if s["all_accounted_for"]
        else f"[red]NOT all accounted for: missing {s['missing']}, "
        f"{s['history_mismatches']} with a history that ends elsewhere[/]"
    )
    out.print(f"\n[bold]demo finished[/] after {s['duration_s']}s on {s['database']}")
    out.print(f"  enqueued {s['enqueued']} jobs; {verdict}:")
    out.print("    " + ", ".join(f"{k} {v}" for k, v in s["jobs_by_status"].items()))
    w = Counter(s["workers"])
    out.print(
        f"  workers: {w['claimed']} claims, {w['completed']} completed, {w['failed']} failed, "
        f"{w['crashed']} crashed mid-job"
    )
    moved = ", ".join(f"{t} {n}" for t, n in s["reconciler_transitions"].items()) or "nothing"
    out.print(f"  the reconciler moved: {moved}")
    out.print("  task runs: " + ", ".join(f"{t} {n}" for t, n in s["task_runs"].items()))
    out.print(
        f"  look around: RECONCILER_SCHEMA={s['schema']} reconciler status "
        "(or run a task: reconciler run mark-stale --dry-run)"
    )
