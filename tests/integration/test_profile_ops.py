"""The operator's commands on a profile's table, through the real CLI (in-process).

The runbooks' hand-run SQL against their own tables, as commands: list, show,
requeue, cancel, reset-stuck, stats, errors, workers, check, purge; and every
way to get a profile wrong answered with one line, exit 2, nothing changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from reconciler.db import Database
from tests.ops_data import CliRun
from tests.profile_tables import DDL, PROFILES


def _profile_file(tmp_path: Path, name: str, schema: str) -> Path:
    body = (PROFILES / f"{name}.toml").read_text(encoding="utf-8")
    path = tmp_path / f"{name}.toml"
    path.write_text(body.replace('schema = "public"', f'schema = "{schema}"'), encoding="utf-8")
    return path


def _raw(db: Database, sql: str) -> None:
    """A statement as it is, not read for binds (a name may hold ':x' or '%')."""
    with db.transaction() as conn:
        conn.exec_driver_sql(sql.replace("%", "%%"))


def _sql(db: Database, sql: str, **binds: Any) -> list[Any]:
    with db.transaction() as conn:
        result = conn.execute(text(sql), binds)
        return list(result.all()) if result.returns_rows else []


@pytest.fixture
def ai(cli: CliRun, db: Database, schema: str, tmp_path: Path) -> dict[str, str]:
    """ai_course_jobs with one job in each state, the only profile configured."""
    _sql(db, DDL["ai-course-jobs"])
    cli.setenv("RECONCILER_PROFILES", str(_profile_file(tmp_path, "ai-course-jobs", schema)))
    rows = _sql(
        db,
        "INSERT INTO ai_course_jobs (job_type, status, retry_count, error, locked_by,"
        " last_heartbeat, completed_at) VALUES"
        " ('course', 'pending', 0, NULL, NULL, NULL, NULL),"
        " ('course', 'processing', 0, NULL, 'w1', now() - interval '2 hours', NULL),"
        " ('course', 'processing', 0, NULL, 'w2', now(), NULL),"
        " ('course', 'failed', 1, 'openai: 429', NULL, NULL, now() - interval '1 minute'),"
        " ('media', 'dead_letter', 3, 'openai: 429', NULL, NULL, now() - interval '2 days'),"
        " ('course', 'done', 1, NULL, NULL, NULL, now() - interval '400 days')"
        " RETURNING status, id::text",
    )
    return {"stuck" if s == "processing" and i == rows[1][1] else s: i for s, i in rows}


def test_list_and_show_with_its_history(cli: CliRun, ai: dict[str, str]) -> None:
    listed = cli.json_lines("jobs", "list", "--status", "failed,dead")
    assert {r["id"] for r in listed} == {ai["failed"], ai["dead_letter"]}
    code, _out, err = cli("jobs", "requeue", ai["dead_letter"], "--reason", "INC-7", "-y")
    assert code == 0, err
    shown = cli.json("jobs", "show", ai["dead_letter"])
    assert shown["job"]["status"] == "pending"
    assert shown["job"]["retry_count"] == 0 and shown["job"]["error"] is None
    [event] = shown["history"]
    assert (event["from_status"], event["to_status"]) == ("dead_letter", "pending")
    assert event["actor"].startswith("cli:") and event["reason"]["reason"] == "INC-7"


def test_requeue_keeps_attempts_when_asked_and_dry_run_changes_nothing(
    cli: CliRun, db: Database, ai: dict[str, str]
) -> None:
    code, out, err = cli("jobs", "retry-failed", "--dry-run", "--json")
    assert code == 0, (out, err)
    dry = cli.json("jobs", "retry-failed", "--dry-run")
    assert dry["transitions"] == {"failed->pending": 1} and dry["dry_run"] is True
    assert _sql(db, "SELECT status FROM ai_course_jobs WHERE id::text = :i", i=ai["failed"]) == [
        ("failed",)
    ]
    done = cli.json("jobs", "retry-failed", "--keep-attempts", "-y")
    assert done["transitions"] == {"failed->pending": 1}
    row = _sql(
        db,
        "SELECT status, retry_count, error FROM ai_course_jobs WHERE id::text = :i",
        i=ai["failed"],
    )
    assert row == [("pending", 1, "openai: 429")]


def test_cancel_and_reset_stuck(cli: CliRun, db: Database, ai: dict[str, str]) -> None:
    code, _out, err = cli("jobs", "cancel", ai["pending"], "-y")
    assert code == 2 and "has no cancelled state" in err
    reset = cli.json("jobs", "reset-stuck", "--older-than", "1h", "-y")
    assert reset["transitions"] == {"processing->stale": 1}
    statuses = dict(_sql(db, "SELECT id::text, status FROM ai_course_jobs"))
    assert statuses[ai["stuck"]] == "stale"
    assert statuses[ai["processing"]] == "processing"


def test_stats_errors_workers_and_check(cli: CliRun, ai: dict[str, str]) -> None:
    stats = cli.json("stats")
    counts = {r["status"]: r["jobs"] for r in stats["statuses"]}
    assert counts == {"pending": 1, "processing": 2, "failed": 1, "dead_letter": 1, "done": 1}
    grouped = cli.json_lines("errors", "--since", "7d")
    assert {(r["kind"], r["error"], r["jobs"]) for r in grouped} == {
        ("course", "openai: 429", 1),
        ("media", "openai: 429", 1),
    }
    workers = {r["worker"]: r for r in cli.json_lines("workers")}
    assert workers["w1"]["silent_s"] > 3600 and workers["w2"]["running"] == 1
    code, out, err = cli("check", "--json")
    assert code == 1, out + err
    assert "1 running job(s) silent past the heartbeat timeout" in out


def test_purge_by_the_profiles_retention(cli: CliRun, db: Database, ai: dict[str, str]) -> None:
    done = cli.json("purge", "--older-than", "30d", "--status", "succeeded", "-y")
    assert done["transitions"] == {"done->purged": 1}
    assert _sql(db, "SELECT count(*) FROM ai_course_jobs") == [(5,)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("enqueue", "x"), "enqueue works on the reconciler's own jobs only"),
        (("dead-letter", "export"), "dead-letter export works on the reconciler's own jobs"),
        (("jobs", "list", "--queue", "q"), "has no queue column"),
        (("jobs", "list", "--status", "cancelled"), "has no cancelled state"),
        (("jobs", "show", "00000000-0000-0000-0000-000000000000"), "no job"),
        (("jobs", "list", "--profile", "nope"), "--profile nope: no such profile"),
    ],
)
def test_what_a_profile_cannot_do_is_one_line_exit_2(
    cli: CliRun, ai: dict[str, str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = cli(*argv)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_several_profiles_need_a_name(
    cli: CliRun, db: Database, schema: str, tmp_path: Path, ai: dict[str, str]
) -> None:
    _sql(db, DDL["jobforge"])
    both = f"{_profile_file(tmp_path, 'ai-course-jobs', schema)},"
    both += str(_profile_file(tmp_path, "jobforge", schema))
    cli.setenv("RECONCILER_PROFILES", f"native,{both}")
    code, _out, err = cli("jobs", "list")
    assert code == 2 and "3 profiles are configured" in err and "--profile" in err
    assert cli.json_lines("jobs", "list", "--profile", "jobforge") == []
    # native still checks its own ids
    code, _out, err = cli("jobs", "cancel", "abc", "--profile", "native")
    assert code == 2 and "job id 'abc' is not a whole number" in err


def test_a_hostile_table_and_column_names(
    cli: CliRun, db: Database, schema: str, tmp_path: Path
) -> None:
    """Quotes, spaces, mixed case, a colon and a percent sign: quoted, never spliced."""
    _raw(
        db,
        'CREATE TABLE "Odd ""Jobs"": %x" ("Job Id" bigint PRIMARY KEY, "St:atus" text,'
        ' "Beat \'n\' :x" timestamptz, "Tries%" integer NOT NULL DEFAULT 0)',
    )
    _raw(
        db,
        'INSERT INTO "Odd ""Jobs"": %x" VALUES (1, \'Run :x\', now() - interval \'1 day\', 0),'
        " (2, 'Run :x', now(), 0), (3, 'it''s queued', NULL, 0)",
    )
    path = tmp_path / "odd.toml"
    path.write_text(
        f'name = "odd"\ntable = \'Odd "Jobs": %x\'\nschema = "{schema}"\n'
        '[columns]\nid = "Job Id"\nstatus = "St:atus"\nheartbeat = "Beat \'n\' :x"\n'
        'attempts = "Tries%"\n'
        '[states]\nqueued = "it\'s queued"\nrunning = "Run :x"\n[retry]\nmax_attempts = 3\n',
        encoding="utf-8",
    )
    cli.setenv("RECONCILER_PROFILES", str(path))
    result = cli.json("run", "mark-stale")
    assert result["transitions"] == {"Run :x->it's queued": 1}, result
    with db.transaction() as conn:
        rows: dict[int, str] = dict(
            conn.exec_driver_sql('SELECT "Job Id", "St:atus" FROM "Odd ""Jobs"": %%x"').all()
        )
    assert rows == {1: "it's queued", 2: "Run :x", 3: "it's queued"}
    listed = cli.json_lines("jobs", "list", "--status", "queued")
    assert {r["id"] for r in listed} == {"1", "3"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("table = [", "not valid TOML"),
        ('table = "t"\n[columns]\nid = "id"\nstatus = "s"\n', "columns.attempts is missing"),
        (
            'table = "ai_course_jobs"\nschema = "{schema}"\n[columns]\nid = "id"\n'
            'status = "status"\nattempts = "tries"\nheartbeat = "last_heartbeat"\n'
            '[states]\nqueued = "pending"\nrunning = "processing"\n',
            "has no column 'tries' (columns.attempts)",
        ),
        (
            'table = "ai_course_jobs"\nschema = "{schema}"\n[columns]\nid = "id"\n'
            'status = "status"\nattempts = "error"\nheartbeat = "last_heartbeat"\n'
            '[states]\nqueued = "pending"\nrunning = "processing"\n',
            "column 'error' (columns.attempts) is text, it must be smallint or integer or bigint",
        ),
        (
            'table = "t"\n[columns]\nid = "id"\nstatus = "s"\nattempts = "a"\nheartbeat = "h"\n'
            '[states]\nqueued = "x"\nrunning = "x"\n',
            "states.running and states.queued are both 'x'",
        ),
        ('table = "t"\nmystery = 1\n', "unknown key mystery"),
    ],
)
def test_a_bad_profile_is_refused_before_anything_runs(
    cli: CliRun, db: Database, schema: str, tmp_path: Path, body: str, message: str
) -> None:
    _sql(db, DDL["ai-course-jobs"])
    _sql(
        db,
        "INSERT INTO ai_course_jobs (status, last_heartbeat) VALUES"
        " ('processing', now() - interval '1 day')",
    )
    path = tmp_path / "bad.toml"
    path.write_text(body.replace("{schema}", schema), encoding="utf-8")
    cli.setenv("RECONCILER_PROFILES", str(path))
    code, out, err = cli("run", "mark-stale")
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert _sql(db, "SELECT status FROM ai_course_jobs") == [("processing",)]


def test_infinite_timestamps_written_by_a_worker_break_nothing(
    cli: CliRun, db: Database, ai: dict[str, str]
) -> None:
    """-infinity and infinity in the heartbeat and timestamps: every command still answers."""
    _sql(
        db,
        "INSERT INTO ai_course_jobs (status, locked_by, last_heartbeat, started_at, created_at)"
        " VALUES ('processing', 'w9', '-infinity', '-infinity', '-infinity'),"
        "        ('processing', 'w8', 'infinity', NULL, 'infinity'),"
        "        ('pending', NULL, NULL, NULL, '-infinity')",
    )
    marked = cli.json("run", "mark-stale")
    assert marked["status"] == "ok", marked
    assert marked["transitions"] == {"processing->stale": 2}  # -infinity, and the stuck one
    assert cli.json("stats")["statuses"]
    assert {r["worker"] for r in cli.json_lines("workers")} >= {"w2", "w8"}
    code, out, err = cli("check", "--json")
    assert code in (0, 1, 2), out + err
    code, out, err = cli("jobs", "list")
    assert code == 0, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("jobs", "requeue", "--status", "running"), "takes failed, stale, dead, cancelled jobs"),
        (("jobs", "requeue"), "needs job ids or a filter"),
        (("jobs", "reset-stuck"), "name job ids, or --older-than"),
        (("purge", "--older-than", "1d", "--status", "queued"), "purge takes succeeded"),
        (("purge", "--older-than", "1d", "--status", "dead"), "add --no-backup"),
    ],
)
def test_a_change_refuses_what_it_does_not_take(
    cli: CliRun, db: Database, ai: dict[str, str], argv: tuple[str, ...], message: str
) -> None:
    before = _sql(db, "SELECT id, status FROM ai_course_jobs ORDER BY id")
    code, out, err = cli(*argv, "-y")
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert _sql(db, "SELECT id, status FROM ai_course_jobs ORDER BY id") == before


def test_named_jobs_must_exist_and_be_in_a_state_the_change_takes(
    cli: CliRun, ai: dict[str, str]
) -> None:
    code, _out, err = cli("jobs", "requeue", ai["processing"], "-y")
    assert code == 2 and f"job {ai['processing']} is processing" in err, err
    code, _out, err = cli("jobs", "requeue", "00000000-0000-0000-0000-000000000000", "-y")
    assert code == 2 and "no job with id 00000000-0000-0000-0000-000000000000" in err, err


def test_purge_without_status_takes_the_finished_states_the_table_has(
    cli: CliRun, ai: dict[str, str]
) -> None:
    """ai_course_jobs has no cancelled state: the default is its succeeded (done) alone."""
    done = cli.json("purge", "--older-than", "30d", "-y")
    assert done["transitions"] == {"done->purged": 1}


def test_an_id_column_that_is_not_unique_is_refused(
    cli: CliRun, db: Database, schema: str, tmp_path: Path
) -> None:
    """Two rows with one id would both move for one decision: refused before anything runs."""
    _sql(db, "CREATE TABLE loose (job text, state text, beat timestamptz, tries int)")
    _sql(
        db,
        "INSERT INTO loose VALUES ('a', 'run', now() - interval '1 day', 0),"
        " ('a', 'run', now(), 0)",
    )
    path = tmp_path / "loose.toml"
    path.write_text(
        f'table = "loose"\nschema = "{schema}"\n[columns]\nid = "job"\nstatus = "state"\n'
        'heartbeat = "beat"\nattempts = "tries"\n[states]\nqueued = "q"\nrunning = "run"\n',
        encoding="utf-8",
    )
    cli.setenv("RECONCILER_PROFILES", str(path))
    code, _out, err = cli("run", "mark-stale")
    assert code == 2 and "has no primary key or unique index of its own" in err, err
    assert _sql(db, "SELECT count(*) FROM loose WHERE state = 'run'") == [(2,)]


def test_check_judges_the_profiles_table_health(
    cli: CliRun, db: Database, schema: str, pg_url: str, ai: dict[str, str]
) -> None:
    """An INVALID index left on the profile's own table (an interrupted concurrent build)
    is a check finding on that profile: exit 1, the index named."""
    import psycopg

    with (
        psycopg.connect(pg_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UniqueViolation),
    ):
        conn.execute(
            f'CREATE UNIQUE INDEX CONCURRENTLY ai_leftover ON "{schema}".ai_course_jobs (job_type)'
        )
    code, out, err = cli("check", "--json")
    assert code == 1, out + err
    assert any("ai_leftover is INVALID" in f for f in json.loads(out)["findings"])
