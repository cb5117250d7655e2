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

-- name: ledger_head
-- Where the ledger stands when a process starts counting: it counts what comes after.
SELECT coalesce(max(id), 0) AS id FROM job_events

-- name: ledger_since
-- The ledger's events after :cursor (by the primary key), and any of :gaps (ids seen
-- missing earlier: a transaction that had not committed yet), with what the counters
-- need: the job's queue and priority, the attempt, a finished attempt's duration and
-- a claim's wait. A job purged meanwhile gives NULL queue/priority ('unknown').
SELECT e.id, coalesce(e.from_status, 'none') AS from_status, e.to_status,
       coalesce(j.queue, 'unknown') AS queue, j.priority,
       coalesce((e.reason->>'attempt')::int, j.attempt) AS attempt,
       CASE WHEN e.from_status = 'running' AND e.to_status IN ('succeeded', 'failed')
                 AND j.started_at IS NOT NULL AND j.started_at <= e.at
            THEN extract(epoch FROM e.at - j.started_at)::float8 END AS duration_s,
       CASE WHEN e.to_status = 'running' AND j.run_at <= e.at
            THEN extract(epoch FROM e.at - j.run_at)::float8 END AS wait_s
FROM job_events e
LEFT JOIN jobs j ON j.id = e.job_id
WHERE e.id > CAST(:cursor AS bigint) OR e.id = ANY (CAST(:gaps AS bigint[]))
ORDER BY e.id
LIMIT :limit
