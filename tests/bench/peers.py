"""``python -m tests.bench.peers``: the workers' hot path against the peers', through pgbench.

One job taken and finished per pgbench transaction, two autocommit statements
each, as a worker does it, for every system on the same server, with the same
number of due jobs and the same number of clients:

- reconciler: ``claim(n => 1)`` + ``complete()`` through the SQL API (this build);
- reconciler before: the same two calls to the functions as they were before
  migration 202612031500 (created beside the new ones from the migration files
  that defined them, as ``claim_before`` and ``complete_before``), on the same
  table;
- Procrastinate: ``procrastinate_fetch_job_v2`` + ``procrastinate_finish_job_v1``,
  its schema applied by its own ``SchemaManager``;
- PGQueuer: the dequeue statement and the completion statement its
  ``Queries.dequeue`` and ``Queries.log_jobs`` send, rendered by its own query
  builder, its schema installed by its own CLI (``pgq install``).

The runs are interleaved (each system once per round, ``--rounds`` rounds) and
the figures are the median tps and average latency of each system's runs, and
each system's ratio to the fastest peer. A measurement, not a test: nothing
asserts on the figures. Each system lives in a schema of its own (dropped at
the end); pgbench is PostgreSQL's own (``pgbench`` on PATH, else
/usr/lib/postgresql/<major>/bin/pgbench: Debian's postgresql-contrib or
postgresql-client package ships it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from reconciler.db import normalise_url, redact
from reconciler.migrate import migrate
from reconciler.settings import Settings
from reconciler.sqlfiles import data_dir, migration_files
from tests.bench.__main__ import LOCAL_URL, TEST_URL_ENV, _connect, _drop

RECONCILER_SCHEMA = "reconciler_bench_peers"
PROCRASTINATE_SCHEMA = "reconciler_bench_peers_procrastinate"
PGQUEUER_SCHEMA = "reconciler_bench_peers_pgqueuer"
QUEUE = "bench"

# One job per transaction: take it, then finish it, each its own autocommit statement.
RECONCILER_SCRIPT = """\
SELECT id, claim_token
FROM {claim}(worker => 'w' || :client_id, queues => ARRAY['bench'], n => 1) \\gset
SELECT {complete}(job_id => :id, claim_token => :claim_token);
"""
PROCRASTINATE_SCRIPT = """\
\\set worker :first_worker + :client_id
SELECT id AS job_id FROM procrastinate_fetch_job_v2(ARRAY['bench'], :worker) \\gset
SELECT procrastinate_finish_job_v1(:job_id, 'succeeded', false);
"""


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _pgbench() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    raise SystemExit("pgbench not found: install postgresql-client (or -contrib) for pgbench")


def _in_schema(url: str, schema: str) -> str:
    return make_conninfo(url, options=f"-c search_path={schema}")


def _fresh_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}").format(
                sql.Identifier(schema)
            )
        )


def _drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _function(migration: str, name: str, new_name: str) -> str:
    """The CREATE FUNCTION of ``name`` in ``migration``, renamed (its arguments qualified
    by the new name), to run beside the current one."""
    text = (data_dir("sql") / "migrations" / migration).read_text()
    start = re.search(rf"CREATE (OR REPLACE )?FUNCTION {name}\(", text)
    assert start is not None, f"{name} not in {migration}"
    end = text.index("$$;", text.index("AS $$", start.start())) + 3
    body = text[start.start() : end].replace(f"{name}.", f"{new_name}.")
    return re.sub(rf"FUNCTION {name}\(", f"FUNCTION {new_name}(", body, count=1)


def due_jobs_schema(
    url: str,
    schema: str,
    jobs: int,
    *,
    before: int | None = None,
    changes: Sequence[str] = (),
) -> None:
    """``schema`` built afresh by ``migrate`` (only the files older than ``before``, if
    given), ``changes`` run in it, then ``jobs`` due jobs of QUEUE, vacuumed."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(url),
        schema_name=schema,
    )
    db = _connect(normalise_url(url), schema, settings)
    try:
        _drop(db)
        migrate(db, files=[f for f in migration_files() if before is None or f[0] < before])
    finally:
        db.dispose()
    with psycopg.connect(_in_schema(url, schema), autocommit=True) as conn:
        for change in changes:
            conn.execute(change)
        conn.execute(
            "INSERT INTO jobs (kind, queue, max_attempts, run_at)"
            " SELECT 'bench', %s, 3, now() - interval '1 minute' FROM generate_series(1, %s)",
            [QUEUE, jobs],
        )
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE job_events")


def _setup_reconciler(url: str, jobs: int) -> None:
    """This build, and beside it claim() and complete() as they were before migration
    202612031500 (claim_before, complete_before), on the same table."""
    due_jobs_schema(
        url,
        RECONCILER_SCHEMA,
        jobs,
        changes=(
            _function("202612031011_claim_lanes.sql", "claim", "claim_before"),
            _function("202612021900_initial.sql", "complete", "complete_before"),
        ),
    )


def _setup_procrastinate(
    url: str, jobs: int, clients: int, schema: str = PROCRASTINATE_SCHEMA
) -> int:
    """Procrastinate's schema by its own SchemaManager, ``jobs`` jobs, a worker per client;
    the id of the first worker."""
    import procrastinate

    _fresh_schema(url, schema)
    app = procrastinate.App(
        connector=procrastinate.SyncPsycopgConnector(conninfo=_in_schema(url, schema))
    )
    with app.open():
        app.schema_manager.apply_schema()
    with psycopg.connect(_in_schema(url, schema), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
            " SELECT %s, 'bench', '{}', 'todo' FROM generate_series(1, %s)",
            [QUEUE, jobs],
        )
        workers = [
            conn.execute("SELECT procrastinate_register_worker_v1()").fetchone()
            for _ in range(clients)
        ]
        ids = sorted(int(w[0]) for w in workers if w is not None)
        assert ids == list(range(ids[0], ids[0] + clients)), ids
        for table in ("procrastinate_jobs", "procrastinate_events", "procrastinate_workers"):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    return ids[0]  # pgbench numbers its clients from 0


def _pgqueuer_statements() -> tuple[str, str]:
    """The dequeue (one job, no concurrency limit) and the completion of one job as
    PGQueuer 1.x renders them, with the values its worker binds written in."""
    from pgqueuer.adapters.persistence.qb import QueryQueueBuilder
    from pgqueuer.domain.types import QueueEntrypoint, QueueManagerId

    builder = QueryQueueBuilder()
    dequeue = builder.build_dequeue_query(
        batch_size=1,
        entrypoints=[QueueEntrypoint(QUEUE)],
        concurrency_limits=[0],
        queue_manager_id=QueueManagerId(uuid.uuid4()),
        global_concurrency_limit=None,
        heartbeat_timeout=timedelta(seconds=30),
    )
    values = [sql.Literal(v).as_string(None) for v in dequeue.args]
    text = dequeue.sql
    for i in range(len(values), 0, -1):
        text = text.replace(f"${i}", values[i - 1])
    complete = builder.build_log_job_query()
    complete = (
        complete.replace("$1::bigint[]", "ARRAY[:job_id]::bigint[]")
        .replace("$2::", "ARRAY['successful']::")
        .replace("$3::JSONB[]", "ARRAY[NULL]::jsonb[]")
    )
    # pgbench reads one statement per line unless it ends in ; or a backslash command.
    one_line = " ".join(line.split("--")[0].strip() for line in text.splitlines())
    return one_line.rstrip("; ") + " \\gset", " ".join(complete.split())


def _setup_pgqueuer(url: str, jobs: int) -> str:
    """PGQueuer's schema by its own CLI (``pgq install``), ``jobs`` jobs; the pgbench script."""
    _fresh_schema(url, PGQUEUER_SCHEMA)
    pgq = Path(sys.executable).with_name("pgq")
    command = [str(pgq)] if pgq.exists() else [sys.executable, "-m", "pgqueuer"]
    subprocess.run(
        [*command, "--pg-dsn", url, "--schema", PGQUEUER_SCHEMA, "install"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    with psycopg.connect(_in_schema(url, PGQUEUER_SCHEMA), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgqueuer (priority, entrypoint, status, execute_after)"
            " SELECT 0, %s, 'queued', now() - interval '1 minute' FROM generate_series(1, %s)",
            [QUEUE, jobs],
        )
        for table in ("pgqueuer", "pgqueuer_log"):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    dequeue, complete = _pgqueuer_statements()
    dequeue = dequeue.replace("SELECT * FROM claimed", "SELECT id AS job_id FROM claimed")
    return f"{dequeue}\n{complete};\n"


@dataclass(frozen=True)
class System:
    name: str
    schema: str
    script: str
    variables: dict[str, str]


@dataclass(frozen=True)
class Run:
    tps: float
    latency_ms: float
    failed: str | None


def _run(pgbench: str, url: str, system: System, args: argparse.Namespace) -> Run:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="peers-") as script:
        script.write(system.script)
        script.flush()
        command = [
            pgbench,
            "--no-vacuum",
            f"--protocol={args.protocol}",
            f"--client={args.clients}",
            f"--jobs={args.clients}",
            f"--time={max(1, round(args.seconds))}",
            f"--file={script.name}",
        ]
        command += [f"--define={k}={v}" for k, v in system.variables.items()]
        options = f"-c search_path={system.schema} -c synchronous_commit={args.synchronous_commit}"
        params = conninfo_to_dict(make_conninfo(url, options=options))
        env = {**os.environ, "PGAPPNAME": "reconciler-bench-peers"}
        env.update(
            {
                key: str(params[name])
                for name, key in (
                    ("host", "PGHOST"),
                    ("port", "PGPORT"),
                    ("user", "PGUSER"),
                    ("password", "PGPASSWORD"),
                    ("dbname", "PGDATABASE"),
                    ("options", "PGOPTIONS"),
                )
                if params.get(name)
            }
        )
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    tps = re.search(r"^tps = ([0-9.]+)", done.stdout, re.MULTILINE)
    latency = re.search(r"^latency average = ([0-9.]+) ms", done.stdout, re.MULTILINE)
    failed = None
    if done.returncode != 0 or tps is None:
        failed = " / ".join(done.stderr.strip().splitlines()[:4]) or "pgbench failed"
    return Run(
        float(tps.group(1)) if tps else 0.0,
        float(latency.group(1)) if latency else float("nan"),
        failed,
    )


def _checkpoint(url: str) -> None:
    """A checkpoint before each run, so that no run pays for the previous one's writes."""
    with (
        psycopg.connect(url, autocommit=True) as conn,
        contextlib.suppress(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CHECKPOINT")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.peers", description=__doc__)
    parser.add_argument("--url", default=os.environ.get(TEST_URL_ENV) or LOCAL_URL)
    parser.add_argument("--jobs", type=int, default=400_000, help="due jobs per system (400k)")
    parser.add_argument("--clients", type=int, default=2, help="pgbench clients (2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a run (10)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per system (5)")
    parser.add_argument(
        "--protocol",
        default="prepared",
        choices=["simple", "extended", "prepared"],
        help="pgbench's protocol (prepared: as psycopg and asyncpg do after a few calls)",
    )
    parser.add_argument(
        "--synchronous-commit",
        default="on",
        choices=["on", "off"],
        help="off: the statements' own cost, without waiting for each commit's WAL flush"
        " (on a disk shared with other work, that wait is most of a pair and mostly noise)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    for name in [n for n in os.environ if n.startswith(("RECONCILER_", "PGQUEUER_"))]:
        del os.environ[name]
    url = normalise_url(args.url).render_as_string(hide_password=False).replace("+psycopg", "")
    pgbench = _pgbench()
    schemas = (RECONCILER_SCHEMA, PROCRASTINATE_SCHEMA, PGQUEUER_SCHEMA)
    runs: dict[str, list[Run]] = {}
    try:
        _say(f"{redact(normalise_url(args.url))}: {args.jobs:,} due jobs per system")
        _setup_reconciler(url, args.jobs)
        first_worker = _setup_procrastinate(url, args.jobs, args.clients)
        pgqueuer_script = _setup_pgqueuer(url, args.jobs)
        systems = [
            System(
                "reconciler",
                RECONCILER_SCHEMA,
                RECONCILER_SCRIPT.format(claim="claim", complete="complete"),
                {},
            ),
            System(
                "reconciler before",
                RECONCILER_SCHEMA,
                RECONCILER_SCRIPT.format(claim="claim_before", complete="complete_before"),
                {},
            ),
            System(
                "procrastinate",
                PROCRASTINATE_SCHEMA,
                PROCRASTINATE_SCRIPT,
                {"first_worker": str(first_worker)},
            ),
            System("pgqueuer", PGQUEUER_SCHEMA, pgqueuer_script, {}),
        ]
        for round_ in range(1, args.rounds + 1):
            for system in systems:
                _checkpoint(url)
                run = _run(pgbench, url, system, args)
                _say(
                    f"round {round_} {system.name}: {run.tps:,.0f} tps, "
                    f"{run.latency_ms:.2f} ms" + (f" (FAILED: {run.failed})" if run.failed else "")
                )
                runs.setdefault(system.name, []).append(run)
        version = _server_version(url)
    finally:
        for schema in schemas:
            _drop_schema(url, schema)
    _report(args, runs, version)
    return 0


def _server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def _report(args: argparse.Namespace, runs: dict[str, list[Run]], version: str) -> None:
    median: Callable[[list[float]], float] = statistics.median
    tps = {name: median([r.tps for r in rs]) for name, rs in runs.items()}
    latency = {name: median([r.latency_ms for r in rs]) for name, rs in runs.items()}
    fastest = max(("procrastinate", "pgqueuer"), key=lambda n: tps[n])
    print(
        f"peers benchmark: take + finish one job per pgbench transaction (two autocommit"
        f" statements), {args.clients} clients, {args.jobs:,} due jobs per system,"
        f" {args.rounds} interleaved runs of {args.seconds:g} s each, protocol"
        f" {args.protocol}, synchronous_commit {args.synchronous_commit};"
        f" PostgreSQL {version}, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[1]:.1f}"
    )
    print(
        f"{'system':<20} {'tps (median)':>13} {'min':>8} {'max':>8} {'latency ms':>11}"
        f" {'vs ' + fastest:>18}"
    )
    for name, rs in runs.items():
        figures = [r.tps for r in rs]
        failed = sum(1 for r in rs if r.failed)
        print(
            f"{name:<20} {tps[name]:>13,.0f} {min(figures):>8,.0f} {max(figures):>8,.0f}"
            f" {latency[name]:>11.2f} {tps[name] / tps[fastest]:>17.2f}x"
            + (f"  ({failed} run(s) failed)" if failed else "")
        )


if __name__ == "__main__":
    raise SystemExit(main())
