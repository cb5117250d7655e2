-- Prometheus gauges, read on scrape (reconciler/metrics.py) under a short statement
-- timeout and cached for a few seconds. Every label is bounded: queue, priority,
-- status, task; never a job id or a tenant.

-- name: jobs
-- Jobs by queue, priority and status: queue depth, in flight, dead-letter depth.
-- One index-only pass over jobs_status_queue-style indexes on a healthy table.
SELECT queue, priority, status, count(*) AS n
FROM jobs
GROUP BY queue, priority, status

-- name: oldest_due
-- How long the oldest due job of each queue and priority has been waiting.
SELECT queue, priority,
       extract(epoch FROM statement_timestamp() - min(run_at))::float8 AS age_s
FROM jobs
WHERE status = 'queued' AND run_at <= statement_timestamp()
GROUP BY queue, priority

-- name: task_runs
-- Each task's last successful run (its end) and whether a lease on it is live, and by whom.
SELECT t.task,
       (SELECT extract(epoch FROM max(r.finished_at))::float8 FROM runs r
        WHERE r.task = t.task AND r.status = 'ok') AS last_success,
       l.holder
FROM unnest(CAST(:tasks AS text[])) AS t (task)
LEFT JOIN task_leases l ON l.task = t.task AND l.expires_at > statement_timestamp()
