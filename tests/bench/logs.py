"""``python -m tests.bench.logs``: what one log line costs the process that writes it.

The dead-letter task writes one ``job.dead_lettered`` line per job it moves (logs are
the record and never limited), so a batch of 1,000 dead jobs pays for 1,000 lines
inside its run. This times that very line through the daemon's logging set-up
(:func:`reconciler.logs.configure_logging`, JSON to a file, a registered secret): one
call of the logger per line, as every other line is written, and a batch's lines
through :func:`reconciler.logs.log_many`, as the task writes them; beside them, in the
same run, the floor any JSON-lines logger pays: ``json.dumps`` of the same fields and a
write to the same file. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from reconciler.logs import configure_logging, get_logger, log_many

FIELDS = {
    "job_id": 123_456_789,
    "queue": "default",
    "kind": "email.send",
    "tenant": "tenant-42",
    "attempt": 5,
    "from_status": "failed",
    "error": "TimeoutError: smtp.example.com did not answer within 30 s",
    "run_id": 1_234,
}


BATCH = 1_000


def _time(lines: int, write: Callable[[int], None]) -> float:
    """Microseconds per line, one pass of ``lines`` calls."""
    begun = time.perf_counter()
    for i in range(lines):
        write(i)
    return (time.perf_counter() - begun) / lines * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.logs", description=__doc__)
    parser.add_argument("--lines", type=int, default=20_000, help="lines per pass (20,000)")
    parser.add_argument("--rounds", type=int, default=5, help="passes; the median counts (5)")
    args = parser.parse_args(argv)

    with open(os.devnull, "w") as sink:
        configure_logging(fmt="json", stream=sink, secrets=["s3cr3t-password"])
        log = get_logger("reconciler.signals")

        def ours(i: int) -> None:
            log.warning("job.dead_lettered", **{**FIELDS, "job_id": i})

        def floor(i: int) -> None:
            event = {
                "event": "job.dead_lettered",
                **FIELDS,
                "job_id": i,
                "level": "warning",
                "logger": "reconciler.signals",
                "timestamp": datetime.now(UTC).isoformat(),
            }
            sink.write(json.dumps(event) + "\n")
            sink.flush()

        def batch(i: int) -> None:
            if i % BATCH == 0:  # the task's batch: its lines written at once
                log_many(
                    "reconciler.signals",
                    "warning",
                    "job.dead_lettered",
                    ({**FIELDS, "job_id": i + n} for n in range(BATCH)),
                )

        rows = []
        for name, write in (
            ("json.dumps + write", floor),
            ("one logger call", ours),
            ("log_many, 1,000", batch),
        ):
            write(0)  # warm up
            per_line = statistics.median(_time(args.lines, write) for _ in range(args.rounds))
            rows.append((name, per_line))
    base = rows[0][1]
    print(f"log line cost, median of {args.rounds} passes of {args.lines:,} lines")
    print(f"{'job.dead_lettered':<22}{'us/line':>9}{'x floor':>9}{'per 1,000 jobs':>16}")
    for name, per_line in rows:
        print(f"{name:<22}{per_line:>9.1f}{per_line / base:>9.1f}{per_line:>13.0f} ms")


if __name__ == "__main__":
    main()
