"""The soak: the workload for a given time with a fault schedule, then a report.

    python -m tests.reliability.soak --duration 20m --workers 16 --faults kill,terminate,freeze

The database is ``--database-url`` or ``RECONCILER_TEST_DATABASE_URL``; the
soak works in a schema of its own (``soak_<random>``), dropped at the end
unless ``--keep``. Exit 0 when every invariant holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import text

from reconciler.db import Database, normalise_url, quote_ident, redact
from reconciler.durations import parse_duration
from reconciler.migrate import migrate
from reconciler.settings import Settings
from tests.reliability.faults import FAULT_KINDS, FaultSchedule
from tests.reliability.invariants import History, InvariantResult, format_report
from tests.reliability.operator import Operator
from tests.reliability.worker import Plan
from tests.reliability.workload import Workload, WorkloadConfig, prepare_schema

__all__ = ["main", "report"]


def _counts(db: Database) -> dict[str, int]:
    """Transitions over the whole run, from the events (live and purged)."""
    with db.transaction() as conn:
        rows = conn.execute(
            text(
                "SELECT from_status, to_status, count(*) FROM ("
                " SELECT from_status, to_status FROM job_events"
                " UNION ALL SELECT from_status, to_status FROM rel_purged_events) e"
                " GROUP BY 1, 2"
            )
        ).all()
    return {f"{r[0] or 'new'}->{r[1]}": int(r[2]) for r in rows}


def report(
    h: History,
    results: Sequence[InvariantResult],
    counts: dict[str, int],
    workload: Workload,
    faults: FaultSchedule | None,
    seconds: float,
    operator: Operator | None = None,
) -> str:
    executed = sum(1 for c in h.calls if c.ev == "start")
    requeued = counts.get("failed->queued", 0) + counts.get("stale->queued", 0)
    dead = counts.get("failed->dead", 0) + counts.get("stale->dead", 0)
    m = workload.maintenance.summary()
    lines = [
        f"soak: {seconds:.0f} s, {workload.config.workers} workers, "
        f"heartbeat timeout {workload.config.heartbeat_timeout.total_seconds():g} s",
        f"jobs enqueued   {len(h.enqueued)}",
        f"executions      {executed} (claims recorded by workers)",
        f"succeeded       {counts.get('running->succeeded', 0)}",
        f"failed          {counts.get('running->failed', 0)}",
        f"marked stale    {counts.get('running->stale', 0)}",
        f"requeued        {requeued}",
        f"dead            {dead}",
        f"purged          {sum(1 for _ in h.purged)}",
        "late calls refused (heartbeat/complete/fail returned false) "
        f"{results[4].counts.get('late_calls_refused', 0)}",
        f"workers spawned {workload.pool.spawned}, exits by code {dict(workload.pool.exits)}",
        f"maintenance runs {m['runs']}, failed {m['failed_runs']}, crashed {m['crashed_runs']}",
    ]
    if faults is not None:
        lines.append(
            f"faults injected {dict(faults.injected)}; nothing to inject into {dict(faults.missed)}"
        )
    if operator is not None:
        lines.append(
            f"operator commands done {dict(operator.done)}; answered 1 (moved meanwhile, "
            f"lease held) {dict(operator.refused)}; defects {len(operator.defects)}"
        )
        lines.extend(f"  defect: {d}" for d in operator.defects[:5])
    lines.append("invariants:")
    lines.append(format_report(results))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.soak", description=__doc__)
    parser.add_argument("--duration", default="2m", help="e.g. 90s, 20m")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument(
        "--faults",
        default="kill,terminate,freeze",
        help=f"comma-separated: {','.join(FAULT_KINDS)} (or none)",
    )
    parser.add_argument("--fault-every", default="2s", help="one fault this often")
    parser.add_argument(
        "--operator",
        action="store_true",
        help="an operator runs the real CLI on live jobs throughout (requeue, cancel, "
        "reset-stuck, replay, mark-succeeded, pause/resume, dead-letter export + purge); "
        "workers keep their names across restarts",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="jobs per second (default: 2 per worker, about what they get through)",
    )
    parser.add_argument("--database-url", default=os.environ.get("RECONCILER_TEST_DATABASE_URL"))
    parser.add_argument("--keep", action="store_true", help="keep the schema and the records")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("give --database-url or set RECONCILER_TEST_DATABASE_URL")
    seconds = parse_duration(args.duration).total_seconds()
    kinds = [k for k in args.faults.split(",") if k and k != "none"]
    url = args.database_url
    schema = f"soak_{uuid.uuid4().hex[:10]}"
    records = Path(tempfile.mkdtemp(prefix="soak-"))
    config = WorkloadConfig(
        workers=args.workers,
        enqueue_rate=args.rate if args.rate is not None else 2.0 * args.workers,
        plan=Plan(),
        reuse_names=args.operator,
    )
    admin_settings = Settings(_env_file=None, database_url=SecretStr(url), schema_name=schema)  # type: ignore[call-arg]
    admin = Database.connect(
        normalise_url(url),
        schema=schema,
        lock_timeout=admin_settings.lock_timeout,
        statement_timeout=admin_settings.statement_timeout,
        application_name="rel-soak-admin",
    )
    print(f"soak on {redact(normalise_url(url))}, schema {schema}, records {records}", flush=True)
    ok = False
    try:
        migrate(admin)
        prepare_schema(admin)
        workload = Workload(url, schema, records, config)
        faults = (
            FaultSchedule(workload, kinds, every=parse_duration(args.fault_every).total_seconds())
            if kinds
            else None
        )
        started = time.monotonic()
        workload.start()
        operator = Operator(workload) if args.operator else None
        if operator is not None:
            operator.start()
        if faults is not None:
            faults.start()
        try:
            while time.monotonic() - started < seconds:
                time.sleep(min(10.0, seconds - (time.monotonic() - started)) if seconds > 0 else 0)
                print(
                    f"  {time.monotonic() - started:.0f} s: {workload.enqueuer.count} enqueued",
                    flush=True,
                )
        finally:
            if faults is not None:
                faults.stop()
            if operator is not None:
                operator.stop()
            workload.stop(settle=2.0)
        elapsed = time.monotonic() - started
        h, results = workload.check(admin)
        print(report(h, results, _counts(admin), workload, faults, elapsed, operator))
        ok = all(r.ok for r in results) and (operator is None or not operator.defects)
        if not ok:
            print(f"kept for a post-mortem: schema {schema}, records {records}")
    finally:
        if args.keep or not ok:
            pass
        else:
            with admin.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        admin.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
