"""Bad input: rows written by hand or by buggy workers, hostile configuration, fuzzed values.

Each case gets a clear error or is handled safely; nothing is lost and
nothing else stops. The retry policy is property-tested on the real SQL.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from psycopg import sql
from pydantic import ValidationError
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from reconciler.cli import main
from reconciler.db import Database, quote_ident
from reconciler.durations import format_duration, parse_duration
from reconciler.migrate import migrate
from reconciler.runner import run_task
from reconciler.settings import Settings, describe_error
from reconciler.tasks import TASKS
from tests.conftest import connect, make_settings
from tests.helpers import events_of, insert_job, job

REPO = Path(__file__).resolve().parents[2]


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def _all_tasks_ok(db: Database, settings: Settings, now: datetime) -> dict[str, dict[str, int]]:
    moved = {}
    for name in TASKS:
        result = run_task(db, settings, name, now=now)
        assert result.status == "ok", f"{name}: {result.error}"
        moved[name] = dict(result.transitions)
    return moved


# --- rows written by hand ------------------------------------------------------------------


def test_running_with_no_heartbeat_and_no_lock_time_goes_stale_by_updated_at(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """running, heartbeat_at and locked_at NULL: mark-stale falls back to updated_at."""
    with db.transaction() as conn:
        job_id = conn.execute(
            text(
                "INSERT INTO jobs (kind, status, attempt, max_attempts, locked_by, updated_at)"
                " VALUES ('k', 'running', 1, 3, 'w1', :u) RETURNING id"
            ),
            {"u": db_now - timedelta(hours=1)},
        ).scalar_one()
    result = run_task(db, settings, "mark-stale", now=db_now)
    assert result.transitions == {"running->stale": 1}
    reason = events_of(db, job_id)[-1]["reason"]
    assert reason["worker"] == "w1"
    assert datetime.fromisoformat(reason["last_heartbeat_at"]) == db_now - timedelta(hours=1)


@pytest.mark.parametrize("value", [None, 0, -1])
def test_null_zero_or_negative_max_attempts_is_rejected(db: Database, value: int | None) -> None:
    """By the table's constraints, on INSERT and on UPDATE: NOT NULL / CHECK (>= 1)."""
    with pytest.raises(DBAPIError) as err, db.transaction() as conn:
        conn.execute(text("INSERT INTO jobs (kind, max_attempts) VALUES ('k', :m)"), {"m": value})
    assert _sqlstate(err.value) in ("23502", "23514")  # not_null / check violation
    job_id = insert_job(db)
    with pytest.raises(DBAPIError) as err, db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET max_attempts = :m WHERE id = :id"), {"m": value, "id": job_id}
        )
    assert _sqlstate(err.value) in ("23502", "23514")
    assert job(db, job_id)["max_attempts"] == 3


def test_negative_max_attempts_through_enqueue_is_rejected(db: Database) -> None:
    with pytest.raises(DBAPIError) as err, db.transaction() as conn:
        conn.execute(text("SELECT enqueue(kind => 'k', max_attempts => -1)"))
    assert _sqlstate(err.value) == "23514"


def test_attempt_above_max_attempts_is_dead_lettered(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """attempt 7 of 3, failed or stale: dead-letter takes it; requeue never does."""
    failed = insert_job(db, status="failed", attempt=7, max_attempts=3, finished_at=db_now)
    stale = insert_job(db, status="stale", attempt=4, max_attempts=3, finished_at=db_now)
    moved = _all_tasks_ok(db, settings, db_now + timedelta(hours=1))
    assert moved["requeue"] == {}
    assert moved["dead-letter"] == {"failed->dead": 1, "stale->dead": 1}
    assert job(db, failed)["status"] == job(db, stale)["status"] == "dead"
    assert job(db, failed)["attempt"] == 7


def test_run_at_years_ahead_is_neither_claimed_nor_touched(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    with db.transaction() as conn:
        job_id = conn.execute(
            text("SELECT enqueue(kind => 'k', run_at => :t)"),
            {"t": db_now + timedelta(days=5 * 365)},
        ).scalar_one()
        assert conn.execute(text("SELECT count(*) FROM claim(worker => 'w1')")).scalar_one() == 0
    before = job(db, job_id)
    assert all(not m for m in _all_tasks_ok(db, settings, db_now).values())
    assert job(db, job_id) == before


@pytest.mark.parametrize("priority", [-1, 5, 99])
def test_unknown_priority_is_rejected(db: Database, priority: int) -> None:
    """Through enqueue() (with a hint) and by a direct INSERT (the CHECK)."""
    with pytest.raises(DBAPIError) as err, db.transaction() as conn:
        conn.execute(text("SELECT enqueue(kind => 'k', priority => :p)"), {"p": priority})
    assert _sqlstate(err.value) == "23514"
    assert "out of range" in str(err.value.orig)
    with pytest.raises(DBAPIError) as err, db.transaction() as conn:
        conn.execute(
            text("INSERT INTO jobs (kind, max_attempts, priority) VALUES ('k', 3, :p)"),
            {"p": priority},
        )
    assert _sqlstate(err.value) == "23514"


def test_a_10_mb_payload_goes_through_claim_fail_and_every_task(
    db: Database, pg_url: str, schema: str, db_now: datetime
) -> None:
    settings = make_settings(pg_url, schema, retention_dead=timedelta(seconds=1))
    payload = json.dumps({"blob": "x" * (10 * 1024 * 1024)})
    with db.transaction() as conn:
        job_id = conn.execute(
            text("SELECT enqueue(kind => 'k', payload => CAST(:p AS jsonb), max_attempts => 1)"),
            {"p": payload},
        ).scalar_one()
        token = conn.execute(text("SELECT claim_token FROM claim(worker => 'w1')")).scalar_one()
        assert conn.execute(
            text("SELECT fail(job_id => :j, claim_token => :t)"), {"j": job_id, "t": token}
        ).scalar_one()
    later = db.now() + timedelta(minutes=1)
    moved = _all_tasks_ok(db, settings, later)
    assert moved["dead-letter"] == {"failed->dead": 1}
    purge = run_task(db, settings, "purge", now=later + timedelta(minutes=1))
    assert purge.transitions == {"dead->purged": 1}


def test_an_invalid_status_is_rejected_and_the_row_unchanged(db: Database) -> None:
    """An unknown status (CHECK) and an unlisted transition (the trigger) both fail."""
    with db.transaction() as conn:
        job_id = conn.execute(text("SELECT enqueue(kind => 'k')")).scalar_one()
    with pytest.raises(DBAPIError) as err, db.transaction() as conn:
        conn.execute(text("UPDATE jobs SET status = 'exploded' WHERE id = :id"), {"id": job_id})
    assert _sqlstate(err.value) == "23514"
    with pytest.raises(DBAPIError) as err, db.transaction() as conn:
        conn.execute(text("UPDATE jobs SET status = 'dead' WHERE id = :id"), {"id": job_id})
    assert "illegal job transition queued -> dead" in str(err.value.orig)
    assert job(db, job_id)["status"] == "queued"
    assert len(events_of(db, job_id)) == 1


def test_worker_api_rejects_nonsense_arguments_without_changing_anything(db: Database) -> None:
    """heartbeat/complete/fail for a job or token that is not held: false, no change."""
    with db.transaction() as conn:
        job_id = conn.execute(text("SELECT enqueue(kind => 'k')")).scalar_one()
        token = conn.execute(text("SELECT claim_token FROM claim(worker => 'w1')")).scalar_one()
        for args in [(job_id, uuid.uuid4()), (job_id, None), (-1, token), (None, token)]:
            for fn in ("heartbeat", "complete", "fail"):
                ok = conn.execute(
                    text(f"SELECT {fn}(job_id => :j, claim_token => :t)"),
                    {"j": args[0], "t": args[1]},
                ).scalar_one()
                assert ok is False, (fn, args)
    assert job(db, job_id)["status"] == "running"


@hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.one_of(st.none(), st.text(max_size=40)),
    priority=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    max_attempts=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    run_at=st.sampled_from([None, "infinity", "-infinity", "2026-01-01T00:00:00Z", "epoch"]),
    n=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    error=st.one_of(st.none(), st.text(max_size=30), st.integers(), st.lists(st.integers())),
)
def test_fuzzed_worker_api_arguments_work_or_raise_cleanly(
    db: Database,
    kind: str | None,
    priority: int | None,
    max_attempts: int | None,
    run_at: str | None,
    n: int | None,
    error: object,
) -> None:
    """Any arguments to enqueue/claim/fail either work or raise an SQL error, and never leave a
    job in an impossible state (every job's status, budget and times stay valid)."""
    kind = None if kind is None else kind.replace("\x00", "")
    try:
        with db.transaction() as conn:
            job_id = conn.execute(
                text(
                    "SELECT enqueue(kind => :k, priority => :p, max_attempts => :m,"
                    " run_at => CAST(:r AS timestamptz))"
                ),
                {"k": kind, "p": priority, "m": max_attempts, "r": run_at},
            ).scalar_one()
            assert isinstance(job_id, int)
    except DBAPIError:
        pass
    try:
        with db.transaction() as conn:
            rows = conn.execute(
                text("SELECT id, claim_token FROM claim(worker => 'w', n => :n)"), {"n": n}
            ).all()
            for row in rows:
                conn.execute(
                    text(
                        "SELECT fail(job_id => :j, claim_token => :t, error => CAST(:e AS jsonb))"
                    ),
                    {"j": row.id, "t": row.claim_token, "e": json.dumps(error)},
                )
    except DBAPIError:
        pass
    with db.transaction() as conn:
        bad = conn.execute(
            text(
                "SELECT count(*) FROM jobs WHERE NOT (isfinite(run_at) AND priority BETWEEN 0 AND 4"
                " AND max_attempts BETWEEN 1 AND 1000 AND kind <> ''"
                " AND (status <> 'failed' OR jsonb_typeof(last_error) = 'object'))"
            )
        ).scalar_one()
        conn.execute(text("DELETE FROM job_events"))
        conn.execute(text("DELETE FROM jobs"))
    assert bad == 0


# --- configuration ---------------------------------------------------------------------------

HOSTILE_SCHEMAS = [
    'q"uote',
    "semi;colon; drop table jobs; --",
    "with space",
    "back\\slash'apos",
    "ünï ćødé",
]


@pytest.fixture
def hostile_schema(request: pytest.FixtureRequest, pg_url: str) -> Iterator[str]:
    name = f"{request.param} {uuid.uuid4().hex[:6]}"
    yield name
    admin = connect(pg_url, "public")
    try:
        with admin.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
    finally:
        admin.dispose()


@pytest.mark.parametrize("hostile_schema", HOSTILE_SCHEMAS, indirect=True)
def test_hostile_schema_names_are_quoted_everywhere(pg_url: str, hostile_schema: str) -> None:
    """Quotes, semicolons, spaces: the schema is created, used and nothing else is touched."""
    settings = make_settings(pg_url, hostile_schema, heartbeat_timeout=timedelta(seconds=1))
    db = connect(pg_url, hostile_schema, settings)
    try:
        migrate(db)
        with db.transaction() as conn:
            job_id = conn.execute(text("SELECT enqueue(kind => 'k')")).scalar_one()
            conn.execute(text("SELECT * FROM claim(worker => 'w1')"))
        now = db.now() + timedelta(minutes=1)
        moved = _all_tasks_ok(db, settings, now)
        assert moved["mark-stale"] == {"running->stale": 1}
        later = run_task(db, settings, "requeue", now=now + timedelta(minutes=1))
        assert later.transitions == {"stale->queued": 1}
        with db.engine.connect() as conn:
            found = conn.execute(
                text("SELECT count(*) FROM pg_namespace WHERE nspname = :n"), {"n": hostile_schema}
            ).scalar_one()
        assert found == 1
        assert job(db, job_id)["status"] == "queued"
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECONCILER_HEARTBEAT_TIMEOUT", "-5s"),
        ("RECONCILER_HEARTBEAT_TIMEOUT", "0s"),
        ("RECONCILER_HEARTBEAT_TIMEOUT", "99999999d"),
        ("RECONCILER_HEARTBEAT_TIMEOUT", "1e9s"),
        ("RECONCILER_HEARTBEAT_TIMEOUT", "NaN"),
        ("RECONCILER_HEARTBEAT_TIMEOUT", "5 parsecs"),
        ("RECONCILER_HEARTBEAT_TIMEOUT", "0.0000001ms"),
        ("RECONCILER_RETENTION_DEAD", "inf"),
        ("RECONCILER_STATEMENT_TIMEOUT", ""),
        ("RECONCILER_BATCH_SIZE", "0"),
        ("RECONCILER_BATCH_SIZE", "1e12"),
        ("RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES", '{"kind:x": "-1s"}'),
        ("RECONCILER_SCHEMA", "Mixed"),
        ("RECONCILER_SCHEMA", "x" * 64),
    ],
)
def test_absurd_configuration_stops_with_one_line(
    variable: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The CLI's entry point: exit 2, one line naming the variable, no traceback."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv(variable, value)
    assert main(["run", "mark-stale"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert variable in lines[0]


SECRET = "p@ss:w/rd%#?&= ünï'\""


@pytest.fixture
def secret_role(pg_url: str) -> Iterator[str]:
    """A login role whose password is full of URL-special characters."""
    role = f"rel_secret_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(SECRET)
            )
        )
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(conn.info.dbname), sql.Identifier(role)
            )
        )
    yield role
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_password_with_special_characters_works_and_never_shows(
    pg_url: str, schema: str, secret_role: str
) -> None:
    """URL-encoded in the DSN: the CLI connects, and neither form of it appears in any output."""
    base = make_url(pg_url)
    # Percent-encoded by hand, as an operator would write it; the rest (host,
    # port, or a socket directory in the query) as the test server's URL has it.
    encoded = quote(SECRET, safe="")
    rest = base.set(username=secret_role, password="PLACEHOLDER").render_as_string(
        hide_password=False
    )
    dsn = rest.replace("PLACEHOLDER", encoded, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(RECONCILER_DATABASE_URL=dsn, RECONCILER_SCHEMA=schema, RECONCILER_LOG_FORMAT="json")
    outputs = []
    for args in (["migrate", "--json"], ["run", "mark-stale", "--json"], ["run", "purge"]):
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    # The same DSN pointed at a database that does not exist: an error, with no password in it.
    bad = dict(env, RECONCILER_DATABASE_URL=dsn.replace(f"/{base.database}", "/no_such_db", 1))
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "mark-stale"],
        env=bad,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    outputs.append(proc.stdout + proc.stderr)
    for out in outputs:
        for form in (SECRET, encoded, quote(SECRET)):
            assert form not in out


# --- fuzzing ---------------------------------------------------------------------------------


@hsettings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_parse_duration_either_parses_or_says_how(raw: str) -> None:
    """Any text: a positive-or-zero duration up to 3650 d, or a ValueError with a hint."""
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        assert "e.g." in str(exc) or "3650d" in str(exc)
        return
    assert timedelta(0) <= value <= timedelta(days=3650)


@hsettings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=3650 * 86_400_000),
)
def test_format_duration_round_trips(ms: int) -> None:
    value = timedelta(milliseconds=ms)
    if ms == 0:
        assert format_duration(value) == "0s"
        return
    assert parse_duration(format_duration(value)) == value


_FIELDS = [
    "heartbeat_timeout",
    "run_time_budget",
    "lock_timeout",
    "statement_timeout",
    "retention_succeeded",
    "batch_size",
    "schema_name",
    "log_format",
]


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(_FIELDS),
        st.one_of(
            st.text(max_size=20),
            st.sampled_from(["5m", "-1s", "0s", "3651d", "1h30m", "10", "1000", "json", "R"]),
        ),
        max_size=4,
    )
)
def test_settings_either_load_or_fail_with_one_line(values: dict[str, str]) -> None:
    """Any values for the settings: a valid Settings, or one line naming the variable."""
    try:
        Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]
    except ValidationError as exc:
        line = describe_error(exc)
        assert line.startswith("configuration error: RECONCILER_")
        assert "\n" not in line


# --- the retry policy, on the real SQL ---------------------------------------------------------


def _backoff_s(attempt: int, initial: float, cap: float, multiplier: float) -> float:
    """min(cap, initial * multiplier^(attempt-1)) without overflowing, before jitter."""
    steps = max(attempt, 1) - 1
    if initial <= 0:
        return 0.0
    if steps == 0 or multiplier <= 1:
        return min(initial, cap)
    if steps * math.log(multiplier) >= math.log(cap / initial):
        return cap
    return float(initial * multiplier**steps)


@hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    # An operator's replay moved the budget's start up to attempt_base (0: never replayed).
    base_share=st.floats(min_value=0, max_value=1),
    max_attempts=st.integers(min_value=1, max_value=1000),
    # Intervals hold microseconds: 0, or from a millisecond up (no subnormal floats).
    initial_s=st.one_of(st.just(0.0), st.floats(min_value=0.001, max_value=86_400)),
    cap_factor=st.floats(min_value=1, max_value=1000),
    multiplier=st.floats(min_value=1, max_value=100),
    jitter=st.floats(min_value=0, max_value=0.99),
    elapsed_s=st.floats(min_value=0, max_value=10 * 86_400 * 1000),
    days_policy=st.booleans(),
)
def test_retry_policy_requeues_after_backoff_or_dead_letters_never_both(
    db: Database,
    settings: Settings,
    db_now: datetime,
    attempt: int,
    base_share: float,
    max_attempts: int,
    initial_s: float,
    cap_factor: float,
    multiplier: float,
    jitter: float,
    elapsed_s: float,
    days_policy: bool,
) -> None:
    """Any policy, attempt and budget: requeued no earlier than the backoff of the attempts
    used since the budget's start, or dead, never both."""
    attempt_base = int(attempt * base_share)
    used = attempt - attempt_base
    cap_s = min(initial_s * cap_factor, 86_400 * 1000)
    with db.transaction() as conn:
        conn.execute(text("DELETE FROM jobs"))
        conn.execute(text("DELETE FROM job_events"))
        conn.execute(text("DELETE FROM retry_policies WHERE kind IS NOT NULL"))
        # Written in days when asked: the form an operator might type by hand.
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier, jitter) VALUES ('p', 1,"
                " CASE WHEN :days THEN make_interval(days => floor(:i / 86400)::int,"
                "   secs => :i - floor(:i / 86400) * 86400) ELSE make_interval(secs => :i) END,"
                " make_interval(secs => :c), :m, :j)"
            ),
            {"i": initial_s, "c": cap_s, "m": multiplier, "j": jitter, "days": days_policy},
        )
    finished = db_now - timedelta(days=5)
    job_id = insert_job(
        db,
        kind="p",
        status="failed",
        attempt=attempt,
        attempt_base=attempt_base,
        max_attempts=max_attempts,
        finished_at=finished,
    )
    now = finished + timedelta(seconds=elapsed_s)
    requeue = run_task(db, settings, "requeue", now=now)
    dead = run_task(db, settings, "dead-letter", now=now)
    assert requeue.status == "ok", requeue.error
    assert dead.status == "ok", dead.error
    row = job(db, job_id)
    assert row["attempt"] == attempt  # never decreases (nor changes: claim() counts attempts)
    moves = [(e["from_status"], e["to_status"]) for e in events_of(db, job_id)]
    assert len(moves) <= 1
    base = _backoff_s(used, initial_s, cap_s, multiplier)
    if used >= max_attempts:
        assert row["status"] == "dead" and moves == [("failed", "dead")]
    elif row["status"] == "queued":
        assert moves == [("failed", "queued")]
        assert elapsed_s + 1e-3 >= base * (1 - jitter)
    else:
        assert row["status"] == "failed" and moves == []
        assert elapsed_s <= base * (1 + jitter) + 1e-3


def test_a_huge_attempt_count_does_not_stop_requeue_for_everyone(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """attempt 999 with multiplier 2 used to overflow backoff() and fail the whole batch."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier) VALUES ('many', 1000, interval '1 second', interval '1 minute', 2)"
            )
        )
    big = insert_job(
        db,
        kind="many",
        status="failed",
        attempt=999,
        max_attempts=1000,
        finished_at=db_now - timedelta(hours=1),
    )
    small = insert_job(db, status="failed", attempt=1, finished_at=db_now - timedelta(hours=1))
    result = run_task(db, settings, "requeue", now=db_now)
    assert result.status == "ok", result.error
    assert set(result.sample_ids) == {big, small}
