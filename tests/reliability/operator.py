"""An operator at the keyboard during the workload: the real CLI, on live jobs, as a fault.

The runbooks' day is workers and people at once: someone requeues a dead job
while the dead-letter task runs, cancels a job a worker is halfway through,
resets a job they wrongly think is stuck, replays a succeeded one, marks one
succeeded by hand, pauses a queue for a minute, exports and purges dead
letters. :class:`Operator` does exactly that, one ``python -m reconciler``
process at a time (the same entry point a person types), picking its targets
from the live table. What it did goes to ``operator.jsonl`` in the records
folder, so the checker can tell an operator's lawful act (a purge after an
export, a job cancelled under a worker) from a defect.

Every command must exit 0, or 1 when the job moved meanwhile or a lease was
held (the one line says so); exit 2 or a traceback is a defect.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from tests.reliability.workload import REPO, Workload

__all__ = ["ACTIONS", "ACTOR", "Operator"]

ACTOR = "operator:chaos"
ACTIONS = (
    "requeue",
    "cancel",
    "reset_stuck",
    "replay_succeeded",
    "mark_succeeded",
    "pause",
    "export_purge",
)
# Which jobs each action looks for (a random few of them, right now).
_TARGETS = {
    "requeue": ("failed", "stale", "dead", "cancelled"),
    "cancel": ("running", "queued"),
    "reset_stuck": ("running",),
    "replay_succeeded": ("succeeded",),
    "mark_succeeded": ("running", "failed", "stale", "queued"),
    "export_purge": ("dead",),
}


class Operator:
    """A thread running one operator's command after another until stopped."""

    def __init__(
        self,
        workload: Workload,
        *,
        actions: Sequence[str] = ACTIONS,
        seed: int = 11,
    ) -> None:
        unknown = set(actions) - set(ACTIONS)
        if unknown:
            raise ValueError(f"unknown action(s) {sorted(unknown)}; known: {ACTIONS}")
        self.workload = workload
        self.actions = list(actions)
        self.done: Counter[str] = Counter()  # exit 0
        self.refused: Counter[str] = Counter()  # exit 1: moved meanwhile, lease held
        self.defects: list[str] = []  # exit 2+, or a traceback
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="operator", daemon=True)
        self._records = workload.records_dir / "operator.jsonl"
        self._exports = workload.records_dir / "exports"
        self._exports.mkdir(parents=True, exist_ok=True)
        self._paused: str | None = None
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")},
            "RECONCILER_DATABASE_URL": workload.url,
            "RECONCILER_SCHEMA": workload.schema,
            "RECONCILER_HEARTBEAT_TIMEOUT": f"{workload.config.heartbeat_timeout.total_seconds()}s",
            "RECONCILER_LOG_FORMAT": "json",
            "RECONCILER_LOG_LEVEL": "warning",
            "RECONCILER_LOCK_TIMEOUT": "1s",
        }
        self._conn = psycopg.connect(workload.url, autocommit=True, application_name="rel-operator")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        if self._paused is not None:  # never leave a queue paused behind
            self._cli("resume", self._paused, "--actor", ACTOR)
        self._conn.close()

    @property
    def total(self) -> int:
        return sum(self.done.values())

    def _loop(self) -> None:
        while not self._stop.wait(self._rng.uniform(0.1, 0.4)):
            if self._paused is not None:
                self._act("resume", [])
                continue
            action = self._rng.choice(self.actions)
            statuses = _TARGETS.get(action)
            ids = self._pick(statuses) if statuses else []
            if statuses and not ids:
                continue
            self._act(action, ids)

    def _pick(self, statuses: Sequence[str], n: int = 2) -> list[int]:
        rows = self._conn.execute(
            # A few of the ten most recently changed: finished jobs are purged within
            # seconds here, so an old one would be gone before the command runs.
            sql.SQL(
                "SELECT id FROM (SELECT id FROM {}.jobs WHERE status = ANY(%s)"
                " ORDER BY updated_at DESC LIMIT 10) AS recent ORDER BY random() LIMIT %s"
            ).format(sql.Identifier(self.workload.schema)),
            (list(statuses), self._rng.randint(1, n)),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def _act(self, action: str, ids: list[int]) -> None:
        words = [str(i) for i in ids]
        common = ["--actor", ACTOR]
        if action == "requeue":
            runs = [["jobs", "requeue", *words, "--yes", *common]]
        elif action == "cancel":
            runs = [["jobs", "cancel", *words, "--yes", "--reason", "chaos", *common]]
        elif action == "reset_stuck":
            runs = [["jobs", "reset-stuck", *words, "--yes", *common]]
        elif action == "replay_succeeded":
            runs = [["jobs", "requeue", "--status", "succeeded", *words, "--yes", *common]]
        elif action == "mark_succeeded":
            runs = [["jobs", "mark-succeeded", *words, "--yes", "--reason", "chaos", *common]]
        elif action == "pause":
            self._paused = self._rng.choice(self.workload.config.queues)
            runs = [["pause", self._paused, "--reason", "chaos", *common]]
        elif action == "resume":
            assert self._paused is not None
            runs = [["resume", self._paused, *common]]
            self._paused = None
        elif action == "export_purge":
            out = self._exports / f"dead-{len(list(self._exports.iterdir()))}.jsonl"
            runs = [
                ["dead-letter", "export", *words, "-o", str(out), *common],
                ["dead-letter", "purge", *words, "--yes", *common],
            ]
        else:
            raise ValueError(action)
        for argv in runs:
            code, err = self._cli(*argv)
            self._record(action, argv, ids, code, err)
            if code == 0:
                self.done[action] += 1
            elif (code == 1 and "Traceback" not in err) or _gone_meanwhile(code, err):
                self.refused[action] += 1
                break
            else:
                self.defects.append(f"{' '.join(argv)}: exit {code}: {err.strip()[-500:]}")
                break

    def _cli(self, *argv: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", *argv],
            env=self._env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return done.returncode, done.stderr

    def _record(self, action: str, argv: list[str], ids: list[int], code: int, err: str) -> None:
        line: dict[str, Any] = {
            "action": action,
            "command": " ".join(argv[:2]),
            "ids": ids,
            "code": code,
            "error": err.strip().splitlines()[-1] if err.strip() else "",
        }
        with open(self._records, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


def _gone_meanwhile(code: int, err: str) -> bool:
    """Exit 2 for a named job that is gone or moved on between our pick and the command
    (a worker finished it, purge took it: retention is seconds here). The one line must
    say so: "no job with id N", or "job N is STATUS; ... takes ..."."""
    lines = err.strip().splitlines()
    return (
        code == 2
        and len(lines) == 1
        and re.match(
            r"reconciler: (no job with id \d+|job \d+ is [a-z]+( \(and \d+ more\))?; .* takes )",
            lines[0],
        )
        is not None
    )
