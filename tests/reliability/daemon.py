"""The daemon as the workload's maintenance: N replicas of ``reconciler daemon``.

:class:`DaemonReplicas` satisfies the :class:`~tests.reliability.workload.Maintenance`
protocol, so a scenario swaps it in for the in-process loop::

    Workload(url, schema, records, config, maintenance=DaemonReplicas.factory(replicas=3))

Each replica is a real ``python -m reconciler daemon`` subprocess with the
workload's settings as ``RECONCILER_*`` variables and a schedule file that
runs every task on the workload's intervals. Its connections are named
``reconciler daemon <pid>`` by the daemon, which is what ``terminate`` aims at.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from reconciler.durations import format_duration
from reconciler.settings import Settings

__all__ = ["DaemonReplicas", "daemon_available"]

REPO = Path(__file__).resolve().parents[2]


def daemon_available(python: str = sys.executable, cwd: Path = REPO) -> bool:
    """True when this checkout's reconciler has the ``daemon`` command."""
    return (cwd / "reconciler" / "daemon.py").exists()


def _env(settings: Settings, schedule: Path, extra: dict[str, str]) -> dict[str, str]:
    assert settings.database_url is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(
        RECONCILER_DATABASE_URL=settings.database_url.get_secret_value(),
        RECONCILER_SCHEMA=settings.schema_name,
        RECONCILER_SCHEDULE_FILE=str(schedule),
        RECONCILER_HEARTBEAT_TIMEOUT=format_duration(settings.heartbeat_timeout),
        RECONCILER_BATCH_SIZE=str(settings.batch_size),
        RECONCILER_RUN_TIME_BUDGET=format_duration(settings.run_time_budget),
        RECONCILER_LOCK_TIMEOUT=format_duration(settings.lock_timeout),
        RECONCILER_STATEMENT_TIMEOUT=format_duration(settings.statement_timeout),
        RECONCILER_LEASE_TTL=format_duration(settings.lease_ttl),
        RECONCILER_RETENTION_SUCCEEDED=format_duration(settings.retention_succeeded),
        RECONCILER_RETENTION_CANCELLED=format_duration(settings.retention_cancelled),
        RECONCILER_RETENTION_DEAD=format_duration(settings.retention_dead),
        RECONCILER_LOG_FORMAT="json",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


class DaemonReplicas:
    """``replicas`` daemon subprocesses against one schema; SIGKILL-able one by one."""

    def __init__(
        self,
        settings: Settings,
        intervals: dict[str, timedelta],
        workdir: Path,
        *,
        replicas: int = 1,
        python: str = sys.executable,
        cwd: Path = REPO,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env`` adds variables to every replica's environment (say, a Sentry DSN)."""
        self.settings = settings
        self.extra_env = dict(env or {})
        self.workdir = workdir
        self.python = python
        self.cwd = cwd
        self.count = replicas
        self.procs: list[subprocess.Popen[bytes]] = []
        self.exits: Counter[int] = Counter()
        workdir.mkdir(parents=True, exist_ok=True)
        self.schedule = workdir / "schedule.toml"
        self.schedule.write_text(
            "".join(
                f'[{name}]\nevery = "{format_duration(every)}"\n\n'
                for name, every in intervals.items()
            )
        )

    @classmethod
    def factory(
        cls,
        workdir: Path,
        *,
        replicas: int = 1,
        python: str = sys.executable,
        cwd: Path = REPO,
        env: dict[str, str] | None = None,
    ) -> Callable[[str, str, Settings, Any], DaemonReplicas]:
        """A ``maintenance=`` argument for :class:`~tests.reliability.workload.Workload`."""

        def make(url: str, schema: str, settings: Settings, config: Any) -> DaemonReplicas:
            return cls(
                settings,
                config.intervals,
                workdir,
                replicas=replicas,
                python=python,
                cwd=cwd,
                env=env,
            )

        return make

    @property
    def application_name(self) -> str:
        """The first live replica's connections (terminate aims at one replica at a time)."""
        live = [p for p in self.procs if p.poll() is None]
        return f"reconciler daemon {live[0].pid}" if live else "reconciler daemon -"

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        # The child keeps its own descriptor of the log; ours closes at once.
        with open(self.workdir / f"replica-{index}.log", "ab") as log:
            return subprocess.Popen(
                [self.python, "-m", "reconciler", "daemon"],
                env=_env(self.settings, self.schedule, self.extra_env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def start(self) -> None:
        self.procs = [self._spawn(i) for i in range(self.count)]

    def pids(self) -> list[int]:
        """The live replicas' process ids, in replica order."""
        return [p.pid for p in self.procs if p.poll() is None]

    def kill(self, index: int = 0, restart: bool = True) -> None:
        """SIGKILL one replica mid-whatever; start a new one in its place."""
        proc = self.procs[index]
        proc.send_signal(signal.SIGKILL)
        self.exits[proc.wait()] += 1
        if restart:
            self.procs[index] = self._spawn(index)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                self.exits[p.wait(timeout=60)] += 1
            except subprocess.TimeoutExpired:
                p.kill()
                self.exits[p.wait()] += 1

    def summary(self) -> dict[str, Any]:
        """From the runs table: what the replicas did, whoever did it."""
        assert self.settings.database_url is not None
        with psycopg.connect(self.settings.database_url.get_secret_value()) as conn:
            rows = conn.execute(
                sql.SQL("SELECT task, status, transitions, error FROM {}.runs").format(
                    sql.Identifier(self.settings.schema_name)
                )
            ).fetchall()
        runs: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        moved: Counter[str] = Counter()
        errors: set[str] = set()
        for task, status, transitions, error in rows:
            runs[task] += 1
            if status != "ok":
                failed[task] += 1
                errors.add(error or status)
            moved.update(transitions or {})
        bad_exits = {code: n for code, n in self.exits.items() if code not in (0, -9)}
        tracebacks = [
            p.name for p in self.workdir.glob("replica-*.log") if b"Traceback" in p.read_bytes()
        ]
        return {
            "runs": dict(runs),
            "failed_runs": dict(failed),
            "crashed_runs": {},
            "transitions": dict(moved),
            "errors": sorted(errors),
            "unexpected_errors": [f"exit codes {bad_exits}"] * bool(bad_exits)
            + [f"traceback in {name}" for name in tracebacks],
        }
