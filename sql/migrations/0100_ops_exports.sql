-- 0100_ops_exports: a record of every dead-letter export, so that
-- `reconciler dead-letter purge` can refuse to delete a job nobody backed up.
--
-- Numbered 0100 so that it never collides with the foundation's own 0002...
-- migrations. An export is one row in ops_exports (who, when, where to, with
-- which filter) and one row per exported job in ops_exported_jobs, holding the
-- job's updated_at as it was exported: a job counts as backed up only while
-- that is still its updated_at (a job that changed since, say replayed and
-- dead again with a new error, needs a new export).

CREATE TABLE ops_exports (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exported_at timestamptz NOT NULL,
    actor       text        NOT NULL,
    destination text        NOT NULL,   -- a file path, or '-' for stdout
    filter      jsonb       NOT NULL,   -- the filter of the exported set, as given
    job_count   integer     NOT NULL
);

CREATE TABLE ops_exported_jobs (
    export_id      bigint      NOT NULL REFERENCES ops_exports (id) ON DELETE CASCADE,
    job_id         bigint      NOT NULL,
    job_updated_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, export_id)
);
