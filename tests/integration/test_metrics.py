"""Prometheus metrics: the gauges say what the table holds; stale rather than slow."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
from prometheus_client import CollectorRegistry
from psycopg import sql
from sqlalchemy import text

from reconciler.db import Database
from reconciler.metrics import QueueCollector, TaskMetrics
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.helpers import insert_job


def _samples(collector: QueueCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def test_the_job_gauges_count_what_the_table_holds(db: Database, ids: dict[str, list[int]]) -> None:
    """reconciler_jobs by queue, priority name and status equals a count(*) of the table."""
    samples = _samples(QueueCollector(db))
    with db.transaction() as conn:
        truth = conn.execute(
            text("SELECT queue, priority, status, count(*) FROM jobs GROUP BY 1, 2, 3")
        ).all()
    names = ("critical", "high", "default", "low", "bulk")
    for queue, priority, status, n in truth:
        labels = (("priority", names[priority]), ("queue", queue), ("status", status))
        assert samples[("reconciler_jobs", labels)] == n
    gauges = [k for k in samples if k[0] == "reconciler_jobs"]
    assert len(gauges) == len(truth)
    assert samples[("reconciler_metrics_stale", ())] == 0


def test_oldest_due_age_and_last_success(db: Database, settings: Settings) -> None:
    """The oldest due job's wait, and each task's last ok run, as the database says."""
    with db.transaction() as conn:
        now = conn.execute(text("SELECT statement_timestamp()")).scalar_one()
    insert_job(db, status="queued", queue="email", priority=1, run_at=now - timedelta(minutes=5))
    insert_job(db, status="queued", queue="email", priority=1, run_at=now + timedelta(hours=1))
    result = run_task(db, settings, "requeue")
    samples = _samples(QueueCollector(db))
    age = samples[
        ("reconciler_queue_oldest_due_age_seconds", (("priority", "high"), ("queue", "email")))
    ]
    assert 300 <= age < 3600
    last = samples[("reconciler_task_last_success_timestamp_seconds", (("task", "requeue"),))]
    with db.transaction() as conn:
        finished = conn.execute(
            text("SELECT finished_at FROM runs WHERE id = :id"), {"id": result.run_id}
        ).scalar_one()
    assert isinstance(finished, datetime)
    assert abs(last - finished.timestamp()) < 0.01
    assert ("reconciler_task_last_success_timestamp_seconds", (("task", "purge"),)) not in samples


def test_a_scrape_behind_a_lock_serves_the_last_values_marked_stale(
    pg_url: str, db: Database
) -> None:
    """ACCESS EXCLUSIVE on jobs held elsewhere: the read gives up (lock timeout), the last
    good values are served with reconciler_metrics_stale 1; fresh again once released."""
    insert_job(db, status="queued")
    collector = QueueCollector(db, cache_s=0)
    first = _samples(collector)
    with psycopg.connect(pg_url) as holder:
        holder.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(db.schema, "jobs")
            )
        )
        held = _samples(collector)
        holder.rollback()
    assert held[("reconciler_metrics_stale", ())] == 1
    jobs = {k: v for k, v in held.items() if k[0] == "reconciler_jobs"}
    assert jobs == {k: v for k, v in first.items() if k[0] == "reconciler_jobs"}
    assert _samples(collector)[("reconciler_metrics_stale", ())] == 0


def test_lease_held_is_this_process_only(db: Database) -> None:
    """1 for a task whose live lease this holder has; 0 for another holder's."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO task_leases (task, holder, acquired_at, expires_at) VALUES"
                " ('purge', 'me', now(), now() + interval '1 hour'),"
                " ('requeue', 'someone-else', now(), now() + interval '1 hour')"
            )
        )
    samples = _samples(QueueCollector(db, holder="me"))
    assert samples[("reconciler_lease_held", (("task", "purge"),))] == 1
    assert samples[("reconciler_lease_held", (("task", "requeue"),))] == 0


def test_task_counters_count_this_process_runs(db: Database, settings: Settings) -> None:
    """Runs by status, duration, and rows moved by transition; dry runs count nothing."""
    insert_job(db, status="running", attempt=1, heartbeat_at=db.now() - timedelta(hours=1))
    registry = CollectorRegistry()
    metrics = TaskMetrics(registry)
    metrics.observe(run_task(db, settings, "mark-stale", dry_run=True))
    metrics.observe(run_task(db, settings, "mark-stale"))
    value = registry.get_sample_value
    assert value("reconciler_task_runs_total", {"task": "mark-stale", "status": "ok"}) == 1
    assert (
        value("reconciler_task_rows_total", {"task": "mark-stale", "transition": "running->stale"})
        == 1
    )
    assert value("reconciler_task_run_duration_seconds_count", {"task": "mark-stale"}) == 1


def test_every_metric_the_rules_and_the_dashboard_use_is_exported(
    db: Database, settings: Settings
) -> None:
    """A rule or panel over a metric the exporter does not have would never show: every
    reconciler_* name in the alert rules and the Grafana dashboard is in a real exposition."""
    import re
    from pathlib import Path

    from reconciler.ledger_metrics import LedgerCounters
    from reconciler.metrics import exposition, queue_registry

    insert_job(db, status="queued", run_at=db.now() - timedelta(minutes=1))
    run_task(db, settings, "mark-stale")
    registry = queue_registry(db)
    metrics = TaskMetrics(registry)
    metrics.observe(run_task(db, settings, "requeue"))
    ledger = LedgerCounters(db, registry)
    assert ledger.poll()
    with db.transaction() as conn:  # a job through the worker API: every counter has a sample
        conn.execute(text("SELECT enqueue(kind => 'k')"))
        for outcome in ("complete", "fail"):
            conn.execute(text("SELECT enqueue(kind => 'k')"))
            row = conn.execute(text("SELECT id, claim_token FROM claim(worker => 'w')")).one()
            conn.execute(
                text(f"SELECT {outcome}(job_id => :i, claim_token => :t)"),
                {"i": row.id, "t": row.claim_token},
            )
    assert ledger.poll()
    exported = set(re.findall(r"^(reconciler_\w+?)(?:\{| )", exposition(registry).decode(), re.M))
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    for source in (
        deploy / "prometheus" / "alerts.yml",
        deploy / "grafana" / "reconciler-dashboard.json",
    ):
        used = set(re.findall(r"\b(reconciler_\w+)", source.read_text(encoding="utf-8")))
        assert used, f"{source.name} uses no reconciler metric"
        assert used <= exported, (source.name, used - exported)
