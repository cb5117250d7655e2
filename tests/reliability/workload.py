"""A real workload against a real PostgreSQL: enqueuers, worker processes, maintenance.

- :class:`Enqueuer`: a thread adding jobs at a steady rate across queues,
  kinds and all five priorities, writing down every id it got back.
- :class:`WorkerPool`: N worker processes (``worker.py``), each with its own
  connection, kept at N (a crashed worker is replaced by a new one with a new
  name); it can SIGKILL, SIGSTOP and SIGCONT them.
- :class:`MaintenanceLoop`: runs the scheduled tasks through ``run_task`` on
  aggressive intervals. It satisfies the :class:`Maintenance` protocol, so the
  daemon subprocess can take its place: pass another factory to
  :class:`Workload`.
- :class:`Workload`: starts all of it in a schema prepared for the test
  (short backoffs, the purge witness), and afterwards loads the History the
  invariants are checked on.

Everything the workload does to time is real waiting (workers work, loops
tick); nothing here asserts on elapsed time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from reconciler.db import Database, normalise_url
from reconciler.leases import TaskBusy, new_holder
from reconciler.runner import run_task
from reconciler.settings import Settings
from reconciler.tasks import TASKS, TaskResult
from tests.reliability.invariants import (
    CheckConfig,
    History,
    InvariantResult,
    check_all,
    install_witness,
    load_history,
    read_operator_purged,
    read_records,
)
from tests.reliability.worker import DSN_ENV, Plan

__all__ = [
    "Enqueuer",
    "Maintenance",
    "MaintenanceLoop",
    "WorkerPool",
    "Workload",
    "WorkloadConfig",
]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class WorkloadConfig:
    """The shape of a workload. Defaults fit a shared 2-core machine in a few seconds."""

    workers: int = 8
    # Jobs per second across all queues; workers at ~0.3 s per job keep up with it.
    enqueue_rate: float = 30.0
    queues: tuple[str, ...] = ("default", "media", "email")
    kinds: tuple[str, ...] = ("resize", "send", "export", "flaky")
    # Short, so a dead worker's job goes stale within seconds; 7x the heartbeat interval.
    heartbeat_timeout: timedelta = timedelta(seconds=2)
    plan: Plan = field(default_factory=Plan)
    # Aggressive: seconds, not minutes. The checker's bounds are built from these.
    intervals: dict[str, timedelta] = field(
        default_factory=lambda: {
            "mark-stale": timedelta(milliseconds=500),
            "requeue": timedelta(milliseconds=500),
            "dead-letter": timedelta(seconds=1),
            "purge": timedelta(seconds=2),
            "vacuum-analyze": timedelta(seconds=5),
        }
    )
    # Terminal jobs go after seconds, so purge really runs during a short scenario.
    retention: timedelta = timedelta(seconds=3)
    slack: timedelta = timedelta(seconds=8)
    seed: int = 5
    # True: a replacement worker takes the name of the one it replaces (a fixed
    # "host:slot" name, as many deployments have), so one name runs many jobs
    # across processes and only the claim token tells its attempts apart.
    reuse_names: bool = False

    def settings(self, url: str, schema: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": SecretStr(url),
            "schema_name": schema,
            "heartbeat_timeout": self.heartbeat_timeout,
            "retention_succeeded": self.retention,
            "retention_cancelled": self.retention,
            "retention_dead": self.retention,
            "batch_size": 200,
            "run_time_budget": timedelta(seconds=3),
            "lock_timeout": timedelta(seconds=1),
            "statement_timeout": timedelta(seconds=5),
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    def check_config(self) -> CheckConfig:
        return CheckConfig(
            heartbeat_timeout=self.heartbeat_timeout,
            intervals=dict(self.intervals),
            retention=dict.fromkeys(("succeeded", "cancelled", "dead"), self.retention),
            slack=self.slack,
        )


def connect_db(
    url: str, schema: str, settings: Settings, application_name: str, pool_size: int = 2
) -> Database:
    return Database.connect(
        normalise_url(url),
        schema=schema,
        lock_timeout=settings.lock_timeout,
        statement_timeout=settings.statement_timeout,
        application_name=application_name,
        pool_size=pool_size,
    )


# --- maintenance -----------------------------------------------------------------------------


class Maintenance(Protocol):
    """What runs the tasks during a workload: this loop now, the daemon later."""

    @property
    def application_name(self) -> str:
        """Its connections' application_name, which the terminate fault aims at."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def summary(self) -> dict[str, Any]: ...


class MaintenanceLoop:
    """Every task on its interval through run_task, one thread per task (never two of one).

    One thread per task, as a scheduler with one instance per job would: a
    slow vacuum-analyze does not hold back mark-stale.
    """

    def __init__(
        self,
        url: str,
        schema: str,
        settings: Settings,
        intervals: dict[str, timedelta],
        *,
        application_name: str | None = None,
    ) -> None:
        self.application_name = application_name or f"rel-maint-{schema}"[:63]
        self.settings = settings
        self.intervals = intervals
        self.db = connect_db(url, schema, settings, self.application_name, pool_size=len(TASKS))
        # One lease holder for the loop's whole life, as the daemon does: a run
        # cut off by a restart leaves its lease held until the TTL, and only
        # the same holder may take it back at once.
        self.holder = new_holder()
        self.results: list[TaskResult] = []
        self.crashes: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.unexpected: list[str] = []  # anything run_task should have turned into a failed run
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(name,), name=f"task-{name}", daemon=True)
            for name in TASKS
            if name in intervals  # the tasks the workload schedules (reindex is off by default)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        self.db.dispose()

    def _loop(self, name: str) -> None:
        while not self._stop.is_set():
            try:
                self.results.append(run_task(self.db, self.settings, name, holder=self.holder))
            except SQLAlchemyError:
                # The clock read or the run record failed: the connection was
                # killed. Like the daemon: note it, carry on, retry next tick.
                self.crashes[name] += 1
            except TaskBusy:
                # Someone else holds the lease (an operator's `jobs reset-stuck` runs
                # mark-stale): like the daemon's task.skipped, try again next tick.
                self.skipped[name] += 1
            except Exception as exc:  # a bug: record it, and keep going like a daemon
                self.unexpected.append(f"{name}: {type(exc).__name__}: {exc}")
            self._stop.wait(self.intervals[name].total_seconds())

    def summary(self) -> dict[str, Any]:
        runs: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        moved: Counter[str] = Counter()
        for r in self.results:
            runs[r.task] += 1
            if r.status != "ok":
                failed[r.task] += 1
            moved.update(r.transitions)
        return {
            "runs": dict(runs),
            "failed_runs": dict(failed),
            "crashed_runs": dict(self.crashes),
            "skipped_runs": dict(self.skipped),
            "unexpected_errors": list(self.unexpected),
            "errors": sorted({r.error or "" for r in self.results if r.status != "ok"}),
            "transitions": dict(moved),
        }


# --- enqueuers --------------------------------------------------------------------------------


class Enqueuer:
    """A thread adding jobs at a steady rate; every id it got is written to ``records``."""

    def __init__(self, url: str, schema: str, config: WorkloadConfig, records: Path) -> None:
        self.url = url
        self.config = config
        self.records = records
        self.count = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="enqueuer", daemon=True)
        self._query = sql.SQL(
            "SELECT {}.enqueue(kind => t.k, payload => jsonb_build_object('n', t.n),"
            " queue => t.q, priority => t.p)"
            " FROM unnest(%(k)s::text[], %(q)s::text[], %(p)s::int[], %(n)s::int[])"
            " AS t (k, q, p, n)"
        ).format(sql.Identifier(schema))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        tick = 0.1
        combos = itertools.cycle(itertools.product(self.config.kinds, self.config.queues, range(5)))
        owed = 0.0
        with open(self.records, "a", encoding="utf-8") as out:
            conn: psycopg.Connection[Any] | None = None
            while not self._stop.is_set():
                owed += self.config.enqueue_rate * tick
                n = int(owed)
                owed -= n
                if n:
                    batch = [next(combos) for _ in range(n)]
                    try:
                        if conn is None or conn.closed:
                            conn = psycopg.connect(
                                self.url, autocommit=True, application_name="rel-enqueuer"
                            )
                        rows = conn.execute(
                            self._query,
                            {
                                "k": [b[0] for b in batch],
                                "q": [b[1] for b in batch],
                                "p": [b[2] for b in batch],
                                "n": list(range(self.count, self.count + n)),
                            },
                        ).fetchall()
                    except psycopg.Error:
                        self.errors += 1
                        conn = None
                    else:
                        out.write("".join(f"{r[0]}\n" for r in rows))
                        out.flush()
                        self.count += len(rows)
                self._stop.wait(tick)
            if conn is not None:
                conn.close()


# --- workers --------------------------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    generation: int = 0
    proc: subprocess.Popen[bytes] | None = None
    name: str = ""
    frozen: bool = False
    started: float = 0.0


def _open_attempt(records: Path) -> tuple[int, int] | None:
    """The (job, attempt) a worker had started and not yet finished, by its records."""
    held: tuple[int, int] | None = None
    if not records.exists():
        return None
    for line in records.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d["ev"] == "start":
            held = (d["job"], d["attempt"])
        elif d["ev"] in ("complete", "fail", "crash") or (d["ev"] == "heartbeat" and not d["ok"]):
            held = None
    return held


class WorkerPool:
    """N worker processes; a worker that exits is replaced (under a new name, or the same
    one with ``reuse_names``)."""

    def __init__(self, url: str, schema: str, config: WorkloadConfig, records_dir: Path) -> None:
        self.url = url
        self.schema = schema
        self.config = config
        self.records_dir = records_dir
        self.slots = [_Slot(i) for i in range(config.workers)]
        self.exits: Counter[int] = Counter()
        self.spawned = 0
        self._stopping = False
        self._lock = threading.Lock()
        self._watch = threading.Thread(target=self._watcher, name="worker-pool", daemon=True)
        self._rng = random.Random(config.seed)
        self._clock = psycopg.connect(url, autocommit=True, application_name="rel-pool")
        self._killed = open(records_dir / "pool.calls.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def _spawn(self, slot: _Slot) -> None:
        slot.generation += 1
        slot.name = (
            f"w{slot.index}" if self.config.reuse_names else f"w{slot.index}.{slot.generation}"
        )
        env = {**os.environ, DSN_ENV: self.url}
        slot.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.reliability.worker",
                "--schema",
                self.schema,
                "--name",
                slot.name,
                "--records",
                str(self.records_dir / f"{slot.name}.calls.jsonl"),
                "--seed",
                str(self._rng.randrange(1 << 30)),
                "--plan",
                self.config.plan.to_json(),
            ],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        slot.frozen = False
        slot.started = time.monotonic()
        self.spawned += 1

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)
        self._watch.start()

    def _watcher(self) -> None:
        while not self._stopping:
            with self._lock:
                for slot in self.slots:
                    if self._stopping or slot.proc is None:
                        continue
                    code = slot.proc.poll()
                    # At most one start per slot a second: a worker that cannot
                    # connect (the server restarting) exits at once.
                    if code is not None and time.monotonic() - slot.started >= 1.0:
                        self.exits[code] += 1
                        self._spawn(slot)
            time.sleep(0.1)

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {s.name: s.proc.pid for s in self.slots if s.proc and s.proc.poll() is None}

    def kill(self, name: str) -> bool:
        """SIGKILL a worker; record when, by the database clock, as the end of what it held."""
        with self._lock:
            slot = next((s for s in self.slots if s.name == name), None)
            if slot is None or slot.proc is None or slot.proc.poll() is not None:
                return False
            slot.proc.send_signal(signal.SIGKILL)
            slot.proc.wait()
            held = _open_attempt(self.records_dir / f"{name}.calls.jsonl")
            if held is not None:
                at = self._clock.execute("SELECT now()").fetchone()
                assert at is not None
                self._killed.write(
                    json.dumps(
                        {
                            "ev": "killed",
                            "job": held[0],
                            "attempt": held[1],
                            "worker": name,
                            "at": at[0].isoformat(),
                            "ok": False,
                        }
                    )
                    + "\n"
                )
                self._killed.flush()
            return True

    def freeze(self, name: str) -> bool:
        return self._signal(name, signal.SIGSTOP, frozen=True)

    def thaw(self, name: str) -> bool:
        return self._signal(name, signal.SIGCONT, frozen=False)

    def _signal(self, name: str, sig: int, *, frozen: bool) -> bool:
        with self._lock:
            for slot in self.slots:
                if slot.name == name and slot.proc is not None and slot.proc.poll() is None:
                    slot.proc.send_signal(sig)
                    slot.frozen = frozen
                    return True
        return False

    def stop(self, grace: float = 20.0) -> None:
        """Thaw everyone, ask each worker to finish its job and leave; kill what lingers."""
        with self._lock:
            self._stopping = True
            procs = [s.proc for s in self.slots if s.proc is not None]
        self._watch.join(timeout=5)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                code = p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                code = p.wait()
            self.exits[code] += 1
        self._clock.close()
        self._killed.close()


# --- the whole workload --------------------------------------------------------------------


def prepare_schema(db: Database) -> None:
    """Backoffs of a fraction of a second; one kind ('flaky') with only 2 attempts, so jobs
    go dead within seconds and dead-letter has work; the purge witness."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE retry_policies SET initial_delay = interval '200 milliseconds',"
                " max_delay = interval '1 second', multiplier = 2, jitter = 0.2"
            )
        )
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier, jitter) VALUES ('flaky', 2, interval '100 milliseconds',"
                " interval '800 milliseconds', 2, 0.5)"
            )
        )
    install_witness(db)


class Workload:
    """Enqueuers + worker processes + maintenance, in one schema, until stopped."""

    def __init__(
        self,
        url: str,
        schema: str,
        records_dir: Path,
        config: WorkloadConfig | None = None,
        *,
        maintenance: Callable[[str, str, Settings, WorkloadConfig], Maintenance] | None = None,
        settings_overrides: dict[str, Any] | None = None,
        worker_url: str | None = None,
        maintenance_url: str | None = None,
    ) -> None:
        """``url`` is for observing (faults, the kill clock); workers and enqueuers use
        ``worker_url`` and the maintenance ``maintenance_url`` when given (roles)."""
        self.url = url
        self.schema = schema
        self.config = config or WorkloadConfig()
        self.records_dir = records_dir
        records_dir.mkdir(parents=True, exist_ok=True)
        maintenance_url = maintenance_url or url
        worker_url = worker_url or url
        self.settings = self.config.settings(maintenance_url, schema, **(settings_overrides or {}))
        factory = maintenance or (lambda u, s, st, c: MaintenanceLoop(u, s, st, c.intervals))
        self.maintenance = factory(maintenance_url, schema, self.settings, self.config)
        self.pool = WorkerPool(worker_url, schema, self.config, records_dir)
        self.enqueuer = Enqueuer(worker_url, schema, self.config, records_dir / "main.enqueued")
        self._started = False

    def start(self) -> None:
        self.maintenance.start()
        self.pool.start()
        self.enqueuer.start()
        self._started = True

    def stop(self, settle: float = 0.0) -> None:
        """Stop enqueuing, let workers finish, give maintenance ``settle`` seconds more, stop it."""
        if not self._started:
            return
        self._started = False
        self.enqueuer.stop()
        self.pool.stop()
        if settle:
            time.sleep(settle)  # maintenance keeps ticking; nothing is asserted on this
        self.maintenance.stop()

    def __enter__(self) -> Workload:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def history(self, db: Database) -> History:
        calls, enqueued = read_records(self.records_dir)
        return load_history(
            db,
            self.config.check_config(),
            calls=calls,
            enqueued=enqueued,
            operator_purged=read_operator_purged(self.records_dir),
        )

    def check(self, db: Database) -> tuple[History, list[InvariantResult]]:
        h = self.history(db)
        return h, check_all(h)
