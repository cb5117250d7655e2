-- partitions: keep the partitioned ledger's partitions ahead of time, and drop
-- whole partitions past the events' retention. Only for a partitioned
-- job_events (RECONCILER_EVENTS_PARTITIONING; sql/partitions.sql creates the
-- functions called here, SECURITY DEFINER, granted to the daemon role).
--
-- Binds: :upto (the run's now plus RECONCILER_EVENTS_PARTITIONS_AHEAD), :unit
-- (day or month); :horizon (the run's now minus RECONCILER_RETENTION_EVENTS).

-- name: layout
SELECT c.relkind = 'p' AS partitioned
FROM pg_class c WHERE c.oid = to_regclass('job_events')

-- name: ensure
-- Partitions from the last one's upper bound up to :upto; SHARE UPDATE
-- EXCLUSIVE on job_events (workers' inserts do not wait for it).
SELECT name FROM job_events_partitions_ensure(CAST(:upto AS timestamptz), CAST(:unit AS text)) AS name

-- name: drop
-- The oldest partition, if its upper bound is at or before :horizon; no row
-- when there is none. ACCESS EXCLUSIVE on job_events for the catalog change,
-- waiting at most the batch's lock_timeout.
SELECT d.name, d.upper_bound, d.estimated_rows
FROM job_events_partition_drop_oldest(CAST(:horizon AS timestamptz)) d

-- name: pending_drop
-- What a dry run reports: the partitions the run would drop.
SELECT c.relname AS name, job_events_partition_upper(c.oid) AS upper_bound,
       greatest(c.reltuples, 0)::bigint AS estimated_rows
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass('job_events')
  AND job_events_partition_upper(c.oid) <= CAST(:horizon AS timestamptz)
ORDER BY 2

-- name: last_upper
-- How far ahead the partitions reach.
SELECT max(job_events_partition_upper(i.inhrelid)) AS upper_bound
FROM pg_inherits i WHERE i.inhparent = to_regclass('job_events')
