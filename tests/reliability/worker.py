"""A simulated worker process: claims, heartbeats, then completes, fails, crashes or freezes.

Run as ``python -m tests.reliability.worker --schema S --name w1 --records FILE``
with the database URL in ``RELIABILITY_WORKER_DSN`` (the environment, not the
command line, so the password never shows in ``ps``). It speaks only the SQL
API, as a worker in any language would, through plain psycopg.

Every call is written down as one JSON line in ``--records``, appended with a
single ``write`` so a ``SIGKILL`` never leaves half a line. Each line carries
the database clock of the call itself (``now()`` read in the same statement,
which is the timestamp the function wrote), so the checker compares like with
like: ``{"ev": "start" | "heartbeat" | "complete" | "fail" | "crash", "job",
"attempt", "worker", "at", "ok"}``.

What a worker does with ``false`` from heartbeat/complete/fail is the rule the
README states: stop working on the job at once and never report it again.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

__all__ = ["BEHAVIOURS", "DSN_ENV", "Plan", "main"]

DSN_ENV = "RELIABILITY_WORKER_DSN"

# What a worker does with a job it claimed:
#   complete          heartbeat while working, then complete()
#   fail              heartbeat while working, then fail()
#   crash             heartbeat for a while, then exit without a word
#   crash_after_claim exit right after claim(), before the first heartbeat
#   freeze            stop heartbeating for longer than the timeout (a GC pause,
#                     a stuck syscall), then try to complete(): expect false
BEHAVIOURS = ("complete", "fail", "crash", "crash_after_claim", "freeze")


@dataclass(frozen=True)
class Plan:
    """How a worker behaves; every field is given by the workload."""

    heartbeat_interval_s: float = 0.3
    work_s: tuple[float, float] = (0.05, 0.6)
    idle_s: float = 0.1
    freeze_s: float = 3.0
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "complete": 80,
            "fail": 12,
            "crash": 2,
            "crash_after_claim": 2,
            "freeze": 4,
        }
    )

    def to_json(self) -> str:
        return json.dumps(
            {
                "heartbeat_interval_s": self.heartbeat_interval_s,
                "work_s": list(self.work_s),
                "idle_s": self.idle_s,
                "freeze_s": self.freeze_s,
                "weights": self.weights,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> Plan:
        data = json.loads(raw)
        data["work_s"] = tuple(data["work_s"])
        return cls(**data)


class _Records:
    def __init__(self, path: str, worker: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._worker = worker

    def write(self, ev: str, job: int, attempt: int, at: datetime, ok: bool = True) -> None:
        line = json.dumps(
            {
                "ev": ev,
                "job": job,
                "attempt": attempt,
                "worker": self._worker,
                "at": at.isoformat(),
                "ok": ok,
            }
        )
        os.write(self._fd, (line + "\n").encode())


class Worker:
    def __init__(self, conn: psycopg.Connection[Any], schema: str, name: str, records: _Records):
        self.conn = conn
        self.name = name
        self.records = records
        self.stopping = False
        s = sql.Identifier(schema)
        self._claim = sql.SQL(
            "SELECT c.id, c.attempt, now(), c.claim_token FROM {}.claim(worker => %(w)s) AS c"
        ).format(s)
        self._heartbeat = sql.SQL(
            "SELECT {}.heartbeat(job_id => %(j)s, claim_token => %(t)s), now()"
        ).format(s)
        self._complete = sql.SQL(
            "SELECT {}.complete(job_id => %(j)s, claim_token => %(t)s), now()"
        ).format(s)
        self._fail = sql.SQL(
            "SELECT {}.fail(job_id => %(j)s, claim_token => %(t)s, error => %(e)s::jsonb), now()"
        ).format(s)

    def call(self, query: sql.Composed, job: int, token: UUID, **extra: Any) -> tuple[bool, Any]:
        """heartbeat/complete/fail of ``job`` with the claim's token: (the answer, DB time)."""
        row = self.conn.execute(query, {"j": job, "t": token, **extra}).fetchone()
        assert row is not None
        return bool(row[0]), row[1]

    def run(self, plan: Plan, rng: random.Random) -> int:
        names = list(plan.weights)
        weights = [plan.weights[n] for n in names]
        while not self.stopping:
            row = self.conn.execute(self._claim, {"w": self.name}).fetchone()
            if row is None:
                time.sleep(plan.idle_s)
                continue
            job, attempt, at, token = int(row[0]), int(row[1]), row[2], row[3]
            self.records.write("start", job, attempt, at)
            behaviour = rng.choices(names, weights)[0]
            if behaviour == "crash_after_claim":
                self.records.write("crash", job, attempt, at)
                os._exit(3)
            work = rng.uniform(*plan.work_s)
            crash_after = rng.uniform(0, work) if behaviour == "crash" else None
            if not self._work(job, attempt, token, work, crash_after, plan):
                continue  # fenced out: drop the job, never report it
            if behaviour == "freeze":
                time.sleep(plan.freeze_s)  # no heartbeats: the job goes stale meanwhile
            if behaviour == "fail":
                ok, at = self.call(self._fail, job, token, e=json.dumps({"message": "boom"}))
                self.records.write("fail", job, attempt, at, ok)
            else:
                ok, at = self.call(self._complete, job, token)
                self.records.write("complete", job, attempt, at, ok)
        return 0

    def _work(
        self,
        job: int,
        attempt: int,
        token: UUID,
        work: float,
        crash_after: float | None,
        plan: Plan,
    ) -> bool:
        """Simulate work, heartbeating on the interval; False when fenced out."""
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if crash_after is not None and elapsed >= crash_after:
                ok, at = self.call(self._heartbeat, job, token)
                self.records.write("heartbeat", job, attempt, at, ok)
                self.records.write("crash", job, attempt, at)
                os._exit(4)
            if elapsed >= work:
                return True
            time.sleep(min(plan.heartbeat_interval_s, work - elapsed))
            if time.monotonic() - started < work:
                ok, at = self.call(self._heartbeat, job, token)
                self.records.write("heartbeat", job, attempt, at, ok)
                if not ok:
                    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.reliability.worker")
    parser.add_argument("--schema", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--records", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plan", default=None, help="Plan as JSON")
    args = parser.parse_args(argv)
    plan = Plan.from_json(args.plan) if args.plan else Plan()
    rng = random.Random(args.seed)
    conn = psycopg.connect(
        os.environ[DSN_ENV], autocommit=True, application_name=f"rel-worker-{args.name}"
    )
    worker = Worker(conn, args.schema, args.name, _Records(args.records, args.name))

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.stopping = True  # finish the job in hand, then leave

    signal.signal(signal.SIGTERM, stop)
    try:
        return worker.run(plan, rng)
    except psycopg.OperationalError as exc:
        sys.stderr.write(f"worker {args.name}: connection lost: {exc}\n")
        return 5
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
