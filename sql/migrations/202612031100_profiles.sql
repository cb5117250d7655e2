-- Profiles: the reconciler also reconciles queue tables it does not own
-- (reconciler/profiles/). Its runs say which profile they were for, and
-- every change it makes to such a table is written to the ledger, in the
-- statement that makes it.

-- A constant default: PostgreSQL adds the column without rewriting the table.
ALTER TABLE runs ADD COLUMN profile text NOT NULL DEFAULT 'native';

CREATE TABLE ledger (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    profile     text        NOT NULL,   -- the profile's name (procrastinate, ai-course-jobs, ...)
    table_name  text        NOT NULL,   -- schema.table, as the profile names it
    job_id      text        NOT NULL,   -- the job's id as text (bigint, uuid, ...)
    from_status text        NOT NULL,
    to_status   text        NOT NULL,   -- a status, or 'purged' for a deleted job
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,   -- reconciler:mark-stale, cli:alice, ...
    reason      jsonb       NOT NULL DEFAULT '{}',
    run_id      bigint                  -- the reconciler run that made it
);
CREATE INDEX ledger_job_idx ON ledger (profile, job_id, id);  -- offline: a new, empty table
CREATE INDEX ledger_at_idx ON ledger (at);  -- offline: a new, empty table
