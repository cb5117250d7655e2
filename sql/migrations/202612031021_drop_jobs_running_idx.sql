-- reconciler: no-transaction
-- Heartbeats become HOT updates once no index holds heartbeat_at or updated_at.
DROP INDEX CONCURRENTLY IF EXISTS jobs_running_idx;
