-- `reconciler stats`: the numbers the runbooks' dashboards show.
-- Binds: :now (the database clock, read once) and :since.

-- name: depth
-- Live jobs (queued, running, failed, stale) and dead ones are counted whole: each
-- status has an index that holds just it (the claim, running, retry and
-- dead-letter indexes; jobs_finished_idx for dead, which carries queue and
-- priority, so a million dead jobs are counted from the index alone). Succeeded
-- and cancelled jobs, the bulk of a table kept 30 days, are counted as finished
-- since :since (jobs_finished_idx by finish time): counting every one read the
-- whole table (2.0 s at 2 M rows), a cost that grew with retention, not with
-- the queue. One branch per finished status, each a range of the index.
SELECT j.queue, j.priority, j.status, count(*) AS jobs
FROM jobs j
WHERE j.status IN ('queued', 'running', 'failed', 'stale')
GROUP BY 1, 2, 3
UNION ALL
SELECT j.queue, j.priority, j.status, count(*) AS jobs
FROM jobs j
WHERE j.status = 'dead'
GROUP BY 1, 2, 3
UNION ALL
SELECT j.queue, j.priority, j.status, count(*) AS jobs
FROM jobs j
WHERE j.status = 'succeeded'
  AND j.finished_at >= CAST(:since AS timestamptz)
GROUP BY 1, 2, 3
UNION ALL
SELECT j.queue, j.priority, j.status, count(*) AS jobs
FROM jobs j
WHERE j.status = 'cancelled'
  AND j.finished_at >= CAST(:since AS timestamptz)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3

-- name: table_size
-- The whole table's row count as the planner estimates it (pg_class, as of the
-- last VACUUM or ANALYZE): a size, for free, where count(*) would read it all.
SELECT greatest(c.reltuples, 0)::bigint AS jobs_estimate
FROM pg_class c
WHERE c.oid = to_regclass(quote_ident(current_schema()) || '.jobs')

-- name: oldest_due
-- Per queue and priority: queued jobs already due, and how long the oldest has
-- waited since it became due (run_at), against its priority's latency target.
SELECT j.queue, j.priority, count(*) AS due,
       CAST(:now AS timestamptz) - min(j.run_at) AS oldest_wait,
       EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue IN (j.queue, '*')) AS paused
FROM jobs j
WHERE j.status = 'queued'
  AND j.run_at <= CAST(:now AS timestamptz)
GROUP BY 1, 2
ORDER BY 1, 2

-- name: throughput
-- Status changes per hour: claims (running), completions, failures, requeues...
SELECT date_trunc('hour', e.at) AS hour, e.to_status AS status, count(*) AS jobs
FROM job_events e
WHERE e.at >= CAST(:since AS timestamptz)
GROUP BY 1, 2
ORDER BY 1 DESC, 2

-- name: durations
SELECT j.kind, count(*) AS succeeded,
       round(avg(extract(epoch FROM j.finished_at - j.started_at))::numeric, 3) AS avg_s,
       round(CAST(percentile_cont(0.95) WITHIN GROUP (
           ORDER BY extract(epoch FROM j.finished_at - j.started_at)) AS numeric), 3) AS p95_s
FROM jobs j
WHERE j.status = 'succeeded'
  AND j.finished_at >= CAST(:since AS timestamptz)
  AND j.started_at IS NOT NULL
GROUP BY 1
ORDER BY p95_s DESC, 1

-- name: failure_rate
-- Attempts that ended since :since, by kind: a lost worker (stale) is a failure.
SELECT j.kind,
       count(*) FILTER (WHERE e.to_status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE e.to_status IN ('failed', 'stale')) AS failed,
       round(count(*) FILTER (WHERE e.to_status IN ('failed', 'stale')) / count(*)::numeric, 4)
           AS failure_rate
FROM job_events e
JOIN jobs j ON j.id = e.job_id
WHERE e.from_status = 'running'
  AND e.to_status IN ('succeeded', 'failed', 'stale')
  AND e.at >= CAST(:since AS timestamptz)
GROUP BY 1
ORDER BY failure_rate DESC, 1
