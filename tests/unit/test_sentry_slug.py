"""Sentry monitor slugs: one monitor per task and profile, in the characters Sentry takes."""

from __future__ import annotations

from reconciler.schedule import Entry
from reconciler.sentry import monitor_slug


def test_a_profiles_task_has_its_own_monitor() -> None:
    native = Entry(task="mark-stale")
    profile = Entry(task="mark-stale", profile="ai-course.jobs")
    assert monitor_slug(native.key) == "reconciler-mark-stale"
    assert monitor_slug(profile.key) == "reconciler-mark-stale-ai-course-jobs"
