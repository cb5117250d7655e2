-- reconciler: no-transaction
-- Replaced by jobs_finished_idx (the finished statuses only).
DROP INDEX CONCURRENTLY IF EXISTS jobs_purge_idx;
