-- purge: delete jobs that finished longer ago than their status's retention,
-- with their events, and the reconciler's own old run records.
--
-- Binds: :status (one terminal status per pass), :horizon (the run's now minus
-- that status's retention), :batch_size, :after_finished/:after_id (the keyset,
-- below), :require_backup (an operator's
-- `purge --status dead` without --no-backup: only dead jobs backed up by the
-- rule of sql/backup.sql, checked here under the row lock; the scheduled
-- retention purge is the operator's standing policy and does not ask); for
-- runs: :runs_horizon.
--
-- The job rows and their job_events rows go in one statement, so no event is
-- ever left pointing at a deleted job, nor a job without its history.
--
-- Keyset: each batch starts after the last (finished_at, id) the run's previous
-- batch deleted (:after_finished, :after_id; NULL for the first). Without it every
-- batch would walk the index over the dead entries of the rows the run already
-- deleted (no vacuum has run since), and a big backlog would get slower with
-- every batch. A row skipped because it was locked is left to the next run.
--
-- The status is bound, so the finished statuses are also named as constants: a
-- generic plan can then prove jobs_finished_idx (which holds only those) serves
-- it. :status is always one of them (a run passes each terminal status in turn).
--
-- A batch returns one row per status, with its count, ten of its ids and its keyset
-- (the last finished_at and id it deleted), not one row per job: turning 10,000
-- returned rows into Python objects cost about as much as deleting them (4 us a row
-- against 8; python -m tests.bench before and after).
--
-- Both deletes find their rows by id through an array, so they are index
-- lookups whatever the planner guesses: a prepared statement's generic plan
-- does not know :batch_size, guesses a large batch, and would otherwise
-- hash-join it against a sequential scan of jobs and job_events.

-- name: apply
WITH doomed AS (
    SELECT j.id
    FROM jobs j
    WHERE j.status = CAST(:status AS text)
      AND j.status IN ('succeeded', 'cancelled', 'dead')  -- jobs_finished_idx's own
      AND j.finished_at < CAST(:horizon AS timestamptz)
      AND (NOT CAST(:require_backup AS boolean) OR /*backed_up*/)
      AND (CAST(:after_finished AS timestamptz) IS NULL
           OR (j.finished_at >= CAST(:after_finished AS timestamptz)
               AND (j.finished_at, j.id)
                   > (CAST(:after_finished AS timestamptz), CAST(:after_id AS bigint))))
    ORDER BY j.finished_at, j.id
    LIMIT :batch_size
    FOR UPDATE OF j SKIP LOCKED
), gone AS (
    DELETE FROM jobs j
    WHERE j.id = ANY (ARRAY(SELECT d.id FROM doomed d))
    RETURNING j.id, j.status, j.finished_at
), events AS (
    DELETE FROM job_events e
    WHERE e.job_id = ANY (ARRAY(SELECT g.id FROM gone g))
)
SELECT g.status AS from_status, 'purged' AS to_status, count(*) AS n,
       (array_agg(g.id))[1:10] AS sample_ids,
       max(last.finished_at) AS last_finished, max(last.id) AS last_id
FROM gone g
CROSS JOIN (SELECT l.finished_at, l.id FROM gone l ORDER BY l.finished_at DESC, l.id DESC LIMIT 1) last
GROUP BY g.status

-- name: apply_partitioned
-- The same for a partitioned ledger (RECONCILER_EVENTS_PARTITIONING): the jobs
-- only. Their events stay in their partitions until the partitions task drops
-- each partition whole, past RECONCILER_RETENTION_EVENTS; deleting them here
-- would probe every partition's index per job and write every row once more.
WITH doomed AS (
    SELECT j.id
    FROM jobs j
    WHERE j.status = CAST(:status AS text)
      AND j.status IN ('succeeded', 'cancelled', 'dead')  -- jobs_finished_idx's own
      AND j.finished_at < CAST(:horizon AS timestamptz)
      AND (NOT CAST(:require_backup AS boolean) OR /*backed_up*/)
      AND (CAST(:after_finished AS timestamptz) IS NULL
           OR (j.finished_at >= CAST(:after_finished AS timestamptz)
               AND (j.finished_at, j.id)
                   > (CAST(:after_finished AS timestamptz), CAST(:after_id AS bigint))))
    ORDER BY j.finished_at, j.id
    LIMIT :batch_size
    FOR UPDATE OF j SKIP LOCKED
), gone AS (
    DELETE FROM jobs j
    WHERE j.id = ANY (ARRAY(SELECT d.id FROM doomed d))
    RETURNING j.id, j.status, j.finished_at
)
SELECT g.status AS from_status, 'purged' AS to_status, count(*) AS n,
       (array_agg(g.id))[1:10] AS sample_ids,
       max(last.finished_at) AS last_finished, max(last.id) AS last_id
FROM gone g
CROSS JOIN (SELECT l.finished_at, l.id FROM gone l ORDER BY l.finished_at DESC, l.id DESC LIMIT 1) last
GROUP BY g.status

-- name: runs
WITH doomed AS (
    SELECT r.id
    FROM runs r
    WHERE r.started_at < CAST(:runs_horizon AS timestamptz)
      AND r.status <> 'running'
    ORDER BY r.started_at
    LIMIT :batch_size
    FOR UPDATE SKIP LOCKED
)
DELETE FROM runs r USING doomed d WHERE r.id = d.id
RETURNING r.id
