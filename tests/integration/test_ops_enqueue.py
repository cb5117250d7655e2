"""``reconciler enqueue``: one job from arguments, many from JSON lines, through enqueue()."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from reconciler.db import Database
from tests.helpers import events_of
from tests.ops_data import CliRun


def _jobs(db: Database) -> list[dict[str, object]]:
    with db.transaction() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM jobs ORDER BY id"))]


def test_one_job_from_arguments_with_its_event_labelled_by_the_run(
    cli: CliRun, db: Database
) -> None:
    """enqueue KIND --payload --priority --tenant --at: one job as enqueue() makes it; its event
    has the operator as actor and the run's id; the run is recorded."""
    result = cli.json(
        "enqueue",
        "report.build",
        "--payload",
        '{"report": 7}',
        "--priority",
        "high",
        "--tenant",
        "acme",
        "--at",
        "2099-01-01T00:00Z",
        "--actor",
        "cli:alice",
    )
    assert result["transitions"] == {"new->queued": 1}
    (row,) = _jobs(db)
    assert (row["kind"], row["payload"], row["priority"], row["tenant_id"]) == (
        "report.build",
        {"report": 7},
        1,
        "acme",
    )
    assert row["run_at"] == datetime(2099, 1, 1, tzinfo=UTC)
    assert row["max_attempts"] == 3  # priority 1's policy
    (event,) = events_of(db, int(str(row["id"])))
    assert (event["actor"], event["run_id"]) == ("cli:alice", result["run_id"])
    with db.transaction() as conn:
        run = conn.execute(
            text("SELECT task, actor FROM runs WHERE id = :id"), {"id": result["run_id"]}
        ).one()
    assert tuple(run) == ("enqueue", "cli:alice")


def test_a_backfill_from_json_lines_is_idempotent_with_keys(cli: CliRun, db: Database) -> None:
    """--jsonl: one job per line in batches; run again, the keys return their jobs and nothing
    is added (runbook 000's backfill); a key is scoped per kind and tenant."""
    lines = "\n".join(
        json.dumps({"kind": "reindex", "payload": {"n": n}, "idempotency_key": f"k{n}"})
        for n in range(25)
    )
    lines += "\n\n" + json.dumps({"kind": "other", "idempotency_key": "k1"}) + "\n"
    lines += json.dumps({"kind": "other", "idempotency_key": "k1"}) + "\n"  # twice in one batch

    code, out, err = cli("enqueue", "--jsonl", "--yes", "--batch-size", "10", "--json", stdin=lines)
    first = json.loads(out)
    assert code == 0, err
    assert (first["transitions"], first["batches"]) == ({"new->queued": 26}, 3)
    assert first["details"]["existing"] == 1

    code, out, err = cli("enqueue", "--jsonl", "--yes", "--json", stdin=lines)
    again = json.loads(out)
    assert code == 0, err
    assert again["transitions"] == {}
    assert again["details"]["existing"] == 27
    assert len(_jobs(db)) == 26


def test_a_dry_run_writes_nothing(cli: CliRun, db: Database) -> None:
    """--dry-run: the same statements, rolled back; no job, no event, no run."""
    result = cli.json("enqueue", "x", "--dry-run")
    assert (result["dry_run"], result["transitions"]) == (True, {"new->queued": 1})
    assert _jobs(db) == []
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ('{"kind": "a"}\n{"kind": "b", "priority": 9}\n', "stdin line 2: priority 9"),
        ('{"kind": "a"}\nnot json\n', "stdin line 2:"),
        ('{"payload": {}}\n', "stdin line 1: kind is missing"),
        ('{"kind": "a", "colour": "red"}\n', "unknown key 'colour'"),
        ('{"kind": "a", "run_at": "2026-12-03T02:00"}\n', "has no time zone"),
        ('{"kind": "a\\u0000"}\n', "NUL character"),
        ('{"kind": "a", "max_attempts": 5000}\n', "from 1 to 1000"),
        ("[1, 2]\n", "one JSON object"),
        ('{"kind": "a", "payload": {"x": NaN}}\n', "NaN is not a JSON number"),
        ('{"kind": "a", "payload": [Infinity]}\n', "Infinity is not a JSON number"),
        ('{"kind": "a", "payload": {"x": "\\ud800"}}\n', "payload is not valid UTF-8"),
        ('{"kind": "a\\udcff"}\n', "kind is not valid UTF-8"),
        ('{"kind": "a", "tenant_id": "t\\u0000"}\n', "tenant_id contains a NUL"),
        ('{"kind": "a", "priority": 1e400}\n', "priority inf"),
        ('{"kind": "a", "max_attempts": 1e3}\n', "from 1 to 1000"),
        ('{"kind": "a", "run_at": "infinity"}\n', "is not a time"),
        ("\n", "no job on stdin"),
    ],
)
def test_one_bad_line_refuses_the_whole_backfill(
    cli: CliRun, db: Database, stdin: str, message: str
) -> None:
    """Every line is checked first: one bad line is one line on stderr naming it, exit 2,
    and nothing is enqueued."""
    code, _, err = cli("enqueue", "--jsonl", "--yes", stdin=stdin)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert _jobs(db) == []


def test_many_jobs_without_a_terminal_need_yes(cli: CliRun, db: Database) -> None:
    """Above the confirmation threshold, without --yes and without a terminal: refused."""
    lines = "".join(json.dumps({"kind": "x"}) + "\n" for _ in range(30))
    code, _, err = cli("enqueue", "--jsonl", stdin=lines)
    assert code == 2 and "--yes" in err
    assert _jobs(db) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("enqueue", "k", "--payload", '{"x": NaN}'), "NaN is not a JSON number"),
        (("enqueue", "k", "--payload", '{"x": "\\u0000"}'), "NUL character"),
        (("enqueue", "k\udcff"), "argument 2"),
        (("jobs", "list", "--queue", "a\udcffb"), "is not valid UTF-8"),
        (("policies", "set", "--priority", "1", "--multiplier", "nan"), "not a finite number"),
        (("policies", "set", "--priority", "1", "--multiplier", "inf"), "not a finite number"),
        (("policies", "set", "--priority", "1", "--jitter=-inf"), "not a finite number"),
        (("jobs", "requeue", "1", "--in", "1e400s"), "cannot read duration"),
    ],
)
def test_hostile_arguments_are_one_line_and_exit_2(
    cli: CliRun, db: Database, argv: tuple[str, ...], message: str
) -> None:
    """NaN, infinities, NUL and bytes that are not UTF-8 (argv decoded with surrogateescape):
    one line naming the problem, exit 2, nothing written, never a traceback."""
    with db.transaction() as conn:
        policies = conn.execute(text("SELECT * FROM retry_policies ORDER BY 1, 2")).all()
    code, out, err = cli(*argv)
    assert code == 2, (out, err)
    assert message in err and err.count("\n") == 1, err
    assert _jobs(db) == []
    with db.transaction() as conn:
        assert conn.execute(text("SELECT * FROM retry_policies ORDER BY 1, 2")).all() == policies


def test_policies_json_is_valid_json(cli: CliRun, db: Database) -> None:
    """policies --json prints strict JSON (no NaN), every number finite."""
    code, out, _ = cli("policies", "--json")
    assert code == 0
    for line in out.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
