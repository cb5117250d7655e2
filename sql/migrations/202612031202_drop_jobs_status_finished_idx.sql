-- reconciler: no-transaction
-- Replaced by jobs_purge_idx (status, finished_at, id).
DROP INDEX CONCURRENTLY IF EXISTS jobs_status_finished_idx;
