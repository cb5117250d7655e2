-- reconciler: no-transaction
-- Operators' changes by queue: live jobs of a queue in id order (sql/schema.sql).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_live_queue_idx ON jobs (queue, id)
    WHERE status IN ('queued', 'running', 'failed', 'stale');
