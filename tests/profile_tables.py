"""The queue tables of the runbooks' teams, as the shipped profiles (deploy/profiles/) expect.

Each is created in a test's own schema; :func:`load` reads the shipped profile
and points it there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reconciler.profiles.model import Profile
from reconciler.profiles.toml import load_table_profile

PROFILES = Path(__file__).resolve().parent.parent / "deploy" / "profiles"

# runbook 002: two tables of one shape
AI_JOBS = """
CREATE TABLE {table} (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    {payload}      text NOT NULL DEFAULT 'algebra',
    job_type       text NOT NULL DEFAULT 'course',
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processing', 'done', 'failed', 'dead_letter',
                                     'stale')),
    retry_count    integer NOT NULL DEFAULT 0,
    max_retries    integer NOT NULL DEFAULT 3,
    locked_by      text,
    started_at     timestamptz,
    last_heartbeat timestamptz,
    completed_at   timestamptz,
    error          text,
    created_by     uuid,
    created_at     timestamptz NOT NULL DEFAULT now()
)
"""

# runbook 000
JOBFORGE = """
CREATE TABLE jobforge_jobs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    type         text NOT NULL DEFAULT 'email.send',
    tenant_id    uuid,
    payload      jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'queued',
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    run_at       timestamptz NOT NULL DEFAULT now(),
    locked_by    text,
    locked_at    timestamptz,
    heartbeat_at timestamptz,
    finished_at  timestamptz,
    error        jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
)
"""

# runbook 003
GAME_PLATFORM = """
CREATE TABLE job_queue (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_type    text NOT NULL DEFAULT 'game_platform_sync',
    payload      jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'pending',
    attempts     smallint NOT NULL DEFAULT 0,
    max_attempts smallint NOT NULL DEFAULT 5,
    run_at       timestamptz NOT NULL DEFAULT now(),
    locked_by    text,
    locked_at    timestamptz,
    last_error   text,
    completed_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
)
"""

DDL = {
    "ai-course-jobs": AI_JOBS.format(table="ai_course_jobs", payload="subject"),
    "ai-media-jobs": AI_JOBS.format(table="ai_media_jobs", payload="prompt"),
    "jobforge": JOBFORGE,
    "game-platform": GAME_PLATFORM,
}


def load(name: str, schema: str) -> Profile:
    """The shipped profile ``name``, pointed at ``schema``."""
    return dataclasses.replace(load_table_profile(PROFILES / f"{name}.toml"), schema=schema)
