-- reconciler: no-transaction
-- requeue: failed/stale jobs with attempts left by retry time (sql/schema.sql).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_retry_due_idx ON jobs (retry_at, id)
    WHERE status IN ('failed', 'stale') AND attempt - attempt_base < max_attempts;
