"""The operator's toolkit without a database: filters, confirmation, output, settings."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.cli import build_parser
from reconciler.ops.confirm import OpsError, confirm
from reconciler.ops.filter import JobFilter
from reconciler.ops.output import age, jsonable
from reconciler.settings import Settings

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def parse(*argv: str) -> JobFilter:
    return JobFilter.from_args(build_parser().parse_args(list(argv)))


def test_filter_from_repeated_and_comma_options() -> None:
    """--status a,b --status c and repeated --queue flatten, keeping order and dropping repeats."""
    f = parse(
        "jobs",
        "list",
        "--status",
        "failed,dead",
        "--status",
        "failed",
        "--queue",
        "a",
        "--queue",
        "b,a",
        "--older-than",
        "30d",
    )
    assert f.statuses == ("failed", "dead")
    assert f.queues == ("a", "b")
    assert f.describe() == {
        "statuses": ["failed", "dead"],
        "queues": ["a", "b"],
        "older_than": "30d",
        "limit": 50,
    }


def test_filter_binds_count_back_from_now() -> None:
    """Horizons are the command's now minus the durations; empty means NULL (any)."""
    binds = parse("jobs", "cancel", "7", "--created-since", "1h", "--finished-since", "2h").binds(
        NOW
    )
    assert binds["f_ids"] == [7]
    assert binds["f_created_since"] == NOW - timedelta(hours=1)
    assert binds["f_finished_since"] == NOW - timedelta(hours=2)
    assert binds["f_statuses"] is None and binds["f_finished_before"] is None


def test_limit_alone_is_an_empty_filter() -> None:
    """A limit does not choose which jobs: destructive commands still refuse it alone."""
    assert parse("jobs", "cancel", "--limit", "5").is_empty()
    assert not parse("jobs", "cancel", "--tenant", "x").is_empty()


def test_confirm_below_threshold_or_yes_does_not_ask() -> None:
    """At or under the threshold, or with --yes, nothing is read."""
    confirm("cancel", 20, threshold=20, yes=False, stdin=io.StringIO())
    confirm("cancel", 500, threshold=20, yes=True, stdin=io.StringIO())


def test_confirm_refuses_without_a_terminal() -> None:
    """Not a terminal: a refusal naming --yes, exit code 2."""
    with pytest.raises(OpsError, match="--yes") as caught:
        confirm("cancel", 21, threshold=20, yes=False, stdin=io.StringIO("y\n"))
    assert caught.value.code == 2


@pytest.mark.parametrize(
    ("answer", "ok"), [("y\n", True), ("YES\n", True), ("\n", False), ("n\n", False)]
)
def test_confirm_asks_on_a_terminal(answer: str, ok: bool) -> None:
    """On a terminal it asks on stderr; only y or yes goes ahead, anything else exits 1."""
    err = io.StringIO()
    if ok:
        confirm("cancel", 21, threshold=20, yes=False, stdin=Terminal(answer), stderr=err)
    else:
        with pytest.raises(OpsError) as caught:
            confirm("cancel", 21, threshold=20, yes=False, stdin=Terminal(answer), stderr=err)
        assert caught.value.code == 1
    assert err.getvalue() == "Cancel 21 jobs? [y/N] "


def test_age_and_jsonable() -> None:
    """Ages read like 4.5s or 4m12s; JSON gets ISO times and seconds."""
    assert age(timedelta(seconds=4.5)) == "4.5s"
    assert age(timedelta(seconds=252.4)) == "4m12s"
    assert age(None) == "-"
    assert jsonable({"t": NOW, "d": timedelta(seconds=1.5)}) == {
        "t": "2026-01-01T12:00:00+00:00",
        "d": 1.5,
    }


def test_ops_setting_defaults() -> None:
    """The operator's defaults, every one pinned: a new or changed one must change this test."""
    defaults = Settings(_env_file=None).model_dump()  # type: ignore[call-arg]
    assert {k: v for k, v in defaults.items() if k.startswith(("ops_", "check_"))} == {
        "ops_confirm_threshold": 20,
        "ops_heartbeat_interval": timedelta(seconds=30),
        "check_window": timedelta(hours=1),
        "check_failure_rate_warning": 0.10,
        "check_failure_rate_critical": 0.50,
        "check_failure_min_attempts": 20,
        "check_backlog_age": timedelta(minutes=5),
        "check_backlog_warning": 1000,
        "check_backlog_critical": 10_000,
        "check_dead_letter_warning": 100,
        "check_dead_letter_critical": 1000,
        "check_slow_job_age": timedelta(hours=1),
        "check_latency_critical_factor": 10.0,
        "check_pause_all_age": timedelta(hours=1),
        "check_vacuum_lag": timedelta(hours=1),
        "check_vacuum_min_dead": 10_000,
        "check_bloat_ratio": 2.0,
        "check_bloat_min_bytes": 8 * 1024 * 1024,
    }


def test_bad_ops_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad threshold fails at start-up with one line naming the variable (exit 2; 3 for
    check, which a monitor must read as UNKNOWN)."""
    from reconciler.cli import main

    monkeypatch.setenv("RECONCILER_CHECK_WINDOW", "soon")
    err, out = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("sys.stdout", out)
    assert main(["stats"]) == 2
    assert err.getvalue().startswith("reconciler: configuration error: RECONCILER_CHECK_WINDOW")
    assert main(["check"]) == 3
    assert out.getvalue().startswith(
        "reconciler check: UNKNOWN: configuration error: RECONCILER_CHECK_WINDOW"
    )
