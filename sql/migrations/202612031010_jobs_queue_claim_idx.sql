-- reconciler: no-transaction
-- claim(): queued jobs by queue, priority, run_at (sql/schema.sql).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_queue_claim_idx ON jobs (queue, priority, run_at, id)
    WHERE status = 'queued';
