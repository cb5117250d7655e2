-- reconciler status: each task's latest run and current lease.

-- name: last_runs
-- Per task and profile (runs of a profile's table are that profile's).
SELECT DISTINCT ON (task, profile)
       id, task, profile, started_at, finished_at, status, transitions, batches, error, host, pid
FROM runs
ORDER BY task, profile, started_at DESC, id DESC

-- name: held_leases
SELECT task, holder, run_id, acquired_at, expires_at
FROM task_leases
WHERE expires_at > statement_timestamp()
