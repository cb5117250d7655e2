-- reconciler: no-transaction
-- mark-stale: running jobs by claim time (sql/schema.sql), replacing
-- jobs_running_idx, whose key changed on every heartbeat.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_running_since_idx
    ON jobs ((coalesce(locked_at, '-infinity'::timestamptz)), id)
    WHERE status = 'running';
