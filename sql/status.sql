-- reconciler status: each task's latest run and current lease.

-- name: last_runs
SELECT DISTINCT ON (task)
       id, task, started_at, finished_at, status, transitions, batches, error, host, pid
FROM runs
ORDER BY task, started_at DESC, id DESC

-- name: held_leases
SELECT task, holder, run_id, acquired_at, expires_at
FROM task_leases
WHERE expires_at > statement_timestamp()
