-- reconciler: no-transaction
-- jobs_finished_idx replaces jobs_purge_idx (status, finished_at, id), which held
-- an entry for every job: each claim, failure, stale mark and requeue wrote one
-- into it (the status is its first column), for an index that only purge and the
-- finished counts read. It holds the finished statuses alone now, so the workers'
-- claim writes three index entries where it wrote four, and it carries queue and
-- priority, so `stats` and the dashboard count dead and recently finished jobs
-- per queue and priority from the index alone (an index-only scan; at 10 M rows
-- with a million dead jobs the depth count read a heap page per dead job: 7.8 s).
-- A statement binding the status as a parameter names the finished statuses as
-- constants too (sql/tasks/purge.sql), so its generic plan can use the index.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_finished_idx ON jobs (status, finished_at, id)
    INCLUDE (queue, priority)
    WHERE status IN ('succeeded', 'cancelled', 'dead');
