"""The procrastinate profile with real ``procrastinate worker`` processes.

A worker killed with SIGKILL mid-job: the reconciler (its real CLI) finds the
job, retries it through Procrastinate's own function, a new worker completes
it; or, with no attempts left under the reconciler's policy, the job ends
failed. A worker that keeps heartbeating through a long job is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from tests.acceptance.conftest import CLI
from tests.helpers import wait_until
from tests.procrastinate_env import Pq


def _env(pq: Pq, timeout: str) -> dict[str, str]:
    return {
        "RECONCILER_PROFILES": f"procrastinate:{pq.schema}",
        "RECONCILER_HEARTBEAT_TIMEOUT": timeout,
    }


def _mark_stale(cli: CLI, env: dict[str, str], *extra: str) -> dict[str, Any]:
    done = cli("run", "mark-stale", "--json", *extra, env=env)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("max_attempts", [None, 1])
def test_a_killed_workers_job_is_recovered(
    cli: CLI, pq: Pq, schema: str, max_attempts: int | None
) -> None:
    env = _env(pq, "3s")
    assert cli("migrate", env=env).returncode == 0
    if max_attempts is not None:
        policy = cli(
            "policies",
            "set",
            "--kind",
            "crunch",
            "--max-attempts",
            str(max_attempts),
            "--initial-delay",
            "0s",
            "--max-delay",
            "1s",
            env=env,
        )
        assert policy.returncode == 0, policy.stderr
    job = pq.defer(1, hold=600)
    bystander = pq.defer(2)  # queue 'default' too: done by the first worker, then untouched
    first = pq.worker()
    wait_until(lambda: (0, "start", first.pid) in pq.log(job), "the first worker to start it")
    wait_until(lambda: pq.status(bystander)[0] == "succeeded", "the bystander to be done")
    # Alive and heartbeating: a dry run finds nothing.
    assert _mark_stale(cli, env, "--dry-run")["changed"] == 0
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    runs: list[dict[str, Any]] = []

    def recovered() -> bool:
        runs.append(_mark_stale(cli, env))
        return int(runs[-1]["changed"]) > 0

    wait_until(
        recovered, "the reconciler to recover the killed worker's job", timeout=120, poll=0.5
    )
    assert sum(r["changed"] for r in runs) == 1
    if max_attempts == 1:
        assert runs[-1]["transitions"] == {"doing->failed": 1}
        assert pq.status(job) == ("failed", 1)
        assert pq.events(job) == ["deferred", "started", "failed"]
    else:
        assert runs[-1]["transitions"] == {"doing->todo": 1}
        second = pq.worker()
        # Procrastinate counts each ended attempt: the retry's, then the success's.
        wait_until(
            lambda: pq.status(job) == ("succeeded", 2), "a new worker to complete it", timeout=120
        )
        assert pq.log(job) == [
            (0, "start", first.pid),
            (1, "start", second.pid),
            (1, "done", second.pid),
        ]
        # Procrastinate's own triggers, as for a retry of its own: the retry's due time
        # (scheduled) and the transition back to todo, then the new attempt.
        assert pq.events(job) == [
            "deferred",
            "started",
            "scheduled",
            "deferred_for_retry",
            "started",
            "succeeded",
        ]
    assert pq.status(bystander) == ("succeeded", 1)
    assert pq.events(bystander) == ["deferred", "started", "succeeded"]
    ledger = pq.sql(f'SELECT job_id, from_status, to_status, actor FROM "{schema}".ledger')
    assert ledger == [
        (
            str(job),
            "doing",
            runs[-1]["transitions"] and next(iter(runs[-1]["transitions"])).split("->")[1],
            "reconciler:mark-stale",
        )
    ]


def test_a_heartbeating_worker_is_never_touched(cli: CLI, pq: Pq) -> None:
    env = _env(pq, "4s")
    assert cli("migrate", env=env).returncode == 0
    job = pq.defer(1, hold=12)
    worker = pq.worker()
    wait_until(lambda: (0, "start", worker.pid) in pq.log(job), "the worker to start it")
    changed = []
    started = time.monotonic()
    while pq.status(job)[0] == "doing":
        changed.append(_mark_stale(cli, env)["changed"])
        assert time.monotonic() - started < 300, "the job never finished"
    assert changed and set(changed) == {0}, changed
    wait_until(lambda: pq.status(job) == ("succeeded", 1), "the job to succeed")
    assert pq.log(job) == [(0, "start", worker.pid), (0, "done", worker.pid)]
