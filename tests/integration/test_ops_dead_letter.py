"""``reconciler dead-letter`` and ``purge``: group, export, replay; purge only what is backed up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops import backed_up
from tests.helpers import job, jobs_by_status
from tests.ops_data import CliRun


def test_list_only_dead(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """dead-letter list shows dead jobs only, with the list filters."""
    rows = cli.json_lines("dead-letter", "list")
    assert sorted(r["id"] for r in rows) == ids["dead_report"]
    rows = cli.json_lines("dead-letter", "list", "--tenant", "globex")
    assert [r["id"] for r in rows] == ids["dead_report"][2:]


def test_errors_grouped_by_message_kind_tenant(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """dead-letter errors: one row per (error, kind, tenant), biggest first."""
    rows = cli.json_lines("dead-letter", "errors")
    assert [(r["error"], r["kind"], r["tenant_id"], r["jobs"]) for r in rows] == [
        ("disk full", "report.export", "acme", 2),
        ("bad template", "report.export", "globex", 1),
    ]
    code, out, _ = cli("dead-letter", "errors")
    assert code == 0 and "disk full" in out


def test_export_writes_jobs_with_history_and_records_it(
    cli: CliRun, db: Database, ids: dict[str, list[int]], tmp_path: Path
) -> None:
    """export: JSON lines of each job and its events, and a record of what was exported."""
    target = tmp_path / "dead.jsonl"
    summary = cli.json("dead-letter", "export", "--tenant", "acme", "--output", str(target))
    assert summary["jobs"] == 2
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["id"] for line in lines] == ids["dead_report"][:2]
    assert lines[0]["last_error"] == {"message": "disk full"}
    assert lines[0]["events"][0]["to_status"] == "dead"
    with db.transaction() as conn:
        export = conn.execute(text("SELECT * FROM ops_exports")).one()
        exported = conn.execute(text("SELECT job_id FROM ops_exported_jobs ORDER BY 1")).scalars()
        assert export.filter == {"statuses": ["dead"], "tenants": ["acme"]}
        assert export.actor.startswith("cli:")
        assert list(exported) == ids["dead_report"][:2]
    assert not (tmp_path / "dead.jsonl.partial").exists()


def test_export_never_replaces_a_file(
    cli: CliRun, ids: dict[str, list[int]], tmp_path: Path
) -> None:
    """An existing file is refused: a second export must not overwrite the first backup."""
    target = tmp_path / "dead.jsonl"
    target.write_text("earlier backup\n")
    code, _, err = cli("dead-letter", "export", "--output", str(target))
    assert code == 2 and "exists" in err
    assert target.read_text() == "earlier backup\n"


def test_export_to_stdout(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """Without --output the JSON lines go to stdout and the summary to stderr."""
    code, out, err = cli("dead-letter", "export", str(ids["dead_report"][0]))
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == ids["dead_report"][:1]
    assert "exported 1 dead job(s)" in err


def test_purge_refuses_without_export(cli: CliRun, db: Database, ids: dict[str, list[int]]) -> None:
    """purge refuses while any matching dead job has no export; nothing is deleted."""
    code, _, err = cli("dead-letter", "purge", "--tenant", "acme", "--yes")
    assert code == 2
    assert "no export" in err and "--no-backup" in err
    assert jobs_by_status(db)["dead"] == 3


def test_purge_after_export_of_the_same_set(
    cli: CliRun, db: Database, ids: dict[str, list[int]], tmp_path: Path
) -> None:
    """After an export of the set, purge deletes those jobs with their events; others stay."""
    cli.json("dead-letter", "export", "--tenant", "acme", "--output", str(tmp_path / "a.jsonl"))
    code, _, _err = cli("dead-letter", "purge", "--yes")
    assert code == 2, "the globex job was not exported"
    result = cli.json("dead-letter", "purge", "--tenant", "acme")
    assert result["transitions"] == {"dead->purged": 2}
    assert jobs_by_status(db)["dead"] == 1
    with db.transaction() as conn:
        events = conn.execute(
            text("SELECT count(*) FROM job_events WHERE job_id = ANY (:ids)"),
            {"ids": ids["dead_report"][:2]},
        ).scalar_one()
        runs = conn.execute(text("SELECT task, transitions FROM runs")).all()
    assert events == 0
    assert [tuple(r) for r in runs] == [("dead-letter purge", {"dead->purged": 2})]


def test_an_export_goes_stale_when_the_job_changes(
    cli: CliRun, db: Database, ids: dict[str, list[int]], tmp_path: Path
) -> None:
    """A job replayed and dead again after its export is not backed up any more."""
    job_id = ids["dead_report"][2]
    cli.json("dead-letter", "export", str(job_id), "--output", str(tmp_path / "a.jsonl"))
    with db.transaction() as conn:
        conn.execute(
            text('UPDATE jobs SET last_error = \'{"message": "new"}\' WHERE id = :id'),
            {"id": job_id},
        )
    code, _, err = cli("dead-letter", "purge", str(job_id))
    assert code == 2 and "no export" in err
    assert job(db, job_id)["status"] == "dead"


def test_purge_no_backup_and_dry_run(cli: CliRun, db: Database, ids: dict[str, list[int]]) -> None:
    """--no-backup skips the export check; --dry-run still deletes nothing."""
    preview = cli.json("dead-letter", "purge", "--all", "--no-backup", "--dry-run")
    assert preview["transitions"] == {"dead->purged": 3}
    assert jobs_by_status(db)["dead"] == 3
    assert cli.json("dead-letter", "purge", "--all", "--no-backup")["changed"] == 3
    assert "dead" not in jobs_by_status(db)


def test_purge_and_replay_need_a_filter(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """An empty filter on purge or replay: one line, exit 2."""
    for action in ("purge", "replay"):
        code, _, err = cli("dead-letter", action)
        assert code == 2 and "needs job ids or a filter" in err


def test_replay_requeues_dead_only(cli: CliRun, db: Database, ids: dict[str, list[int]]) -> None:
    """replay: dead -> queued; a failed id is refused."""
    result = cli.json("dead-letter", "replay", "--kind", "report.export")
    assert result["transitions"] == {"dead->queued": 3}
    code, _, err = cli("dead-letter", "replay", str(ids["failed_email"][0]))
    assert code == 2 and "takes dead jobs" in err


def test_adhoc_purge_reuses_the_purge_task(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """purge --older-than: the purge task's batches, for the chosen statuses only."""
    preview = cli.json("purge", "--older-than", "30d", "--dry-run")
    assert preview["task"] == "purge"
    assert preview["transitions"] == {"succeeded->purged": 4, "cancelled->purged": 1}
    result = cli.json("purge", "--older-than", "30d", "--status", "succeeded", "--batch-size", "3")
    assert result["transitions"] == {"succeeded->purged": 4}
    assert result["batches"] == 2
    assert all(
        i not in [r["id"] for r in cli.json_lines("jobs", "list")] for i in ids["succeeded_old"]
    )
    assert jobs_by_status(db)["cancelled"] == 1


def test_adhoc_purge_refuses_unfinished_and_unexported(
    cli: CliRun, ids: dict[str, list[int]]
) -> None:
    """purge refuses failed (not finished) and dead jobs without an export."""
    code, _, err = cli("purge", "--older-than", "1d", "--status", "failed")
    assert code == 2 and "not failed" in err
    code, _, err = cli("purge", "--older-than", "1d", "--status", "dead")
    assert code == 2 and "no export" in err
    code, _, err = cli("purge", "--older-than", "1d", "--status", "dead", "--no-backup")
    assert code == 0


def test_export_records_go_with_their_jobs(
    cli: CliRun, db: Database, ids: dict[str, list[int]], tmp_path: Path
) -> None:
    """When the purge task deletes an exported job, its export record row goes too."""
    cli.json("dead-letter", "export", "--output", str(tmp_path / "a.jsonl"))
    cli.json("purge", "--older-than", "1d", "--status", "dead")
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM ops_exported_jobs")).scalar_one() == 0
        assert conn.execute(text("SELECT job_count FROM ops_exports")).scalar_one() == 3


def test_an_export_to_stdout_is_recorded_but_is_not_a_backup(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """Nobody can tell stdout's bytes were kept: the export is recorded (durable false) and
    the summary says so, but purge still refuses those jobs."""
    code, _, err = cli("dead-letter", "export", "--tenant", "acme")
    assert code == 0 and "not a backup" in err
    with db.transaction() as conn:
        assert conn.execute(text("SELECT durable FROM ops_exports")).scalar_one() is False
    code, _, err = cli("dead-letter", "purge", "--tenant", "acme", "--yes")
    assert code == 2 and "no export" in err
    assert jobs_by_status(db)["dead"] == 3


@pytest.mark.parametrize(
    "command",
    [
        ("dead-letter", "purge", "--tenant", "acme"),
        ("purge", "--older-than", "1d", "--status", "dead"),
    ],
    ids=["dead-letter-purge", "adhoc-purge"],
)
def test_a_job_that_changes_after_the_check_is_not_deleted(
    cli: CliRun,
    db: Database,
    ids: dict[str, list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: tuple[str, ...],
) -> None:
    """The backup check and the delete share the row locks: a job changed by someone else
    between the preview's check and the delete (here: its error rewritten, so its export is
    stale) is left, said in one line, exit 1; the others go. Before the fix, ad hoc purge
    checked in a separate transaction and deleted it."""
    cli.json("dead-letter", "export", "--tenant", "acme", "--output", str(tmp_path / "a.jsonl"))
    if command[0] == "purge":
        cli.json("dead-letter", "export", "--tenant", "globex", "--output", str(tmp_path / "b"))
    changed = ids["dead_report"][0]
    real = backed_up.refuse_unless_backed_up

    def check_then_someone_changes_the_job(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        with db.transaction() as conn:
            conn.execute(
                text('UPDATE jobs SET last_error = \'{"message": "new"}\' WHERE id = :id'),
                {"id": changed},
            )

    monkeypatch.setattr(
        f"reconciler.ops.{'purge' if command[0] == 'purge' else 'dead_letter'}"
        ".refuse_unless_backed_up",
        check_then_someone_changes_the_job,
    )
    code, _, err = cli(*command, "--yes")
    assert code == 1
    assert "1 dead job(s) not deleted: changed since their export" in err
    assert job(db, changed)["status"] == "dead"
    with db.transaction() as conn:
        gone = conn.execute(
            text("SELECT count(*) FROM jobs WHERE id = :id"), {"id": ids["dead_report"][1]}
        ).scalar_one()
    assert gone == 0  # the other acme job was backed up and went


def test_purge_by_id_of_an_exported_job_exits_0_without_a_not_changed_line(
    cli: CliRun, db: Database, ids: dict[str, list[int]], tmp_path: Path
) -> None:
    """A purged job's events go with it; a named id that is gone was purged, not missed."""
    target = ids["dead_report"][0]
    code, _, err = cli("dead-letter", "export", str(target), "-o", str(tmp_path / "one.jsonl"))
    assert code == 0, err
    code, _, err = cli("dead-letter", "purge", str(target), "--yes")
    assert code == 0, err
    assert "not changed" not in err
    with db.transaction() as conn:
        gone = conn.execute(text("SELECT count(*) FROM jobs WHERE id = :i"), {"i": target})
        assert gone.scalar_one() == 0
