-- The dashboard's overview tiles and its table by queue and priority
-- (reconciler/web/data.py). Binds: :since (the overview's 24 h).
--
-- Live jobs (queued, running, failed, stale) and dead ones are counted whole: each
-- status has an index that holds just it (claim, running, retry and dead-letter
-- indexes, jobs_purge_idx for dead). Succeeded and cancelled jobs, the bulk of a
-- table kept 30 days, are counted over :since only (jobs_purge_idx by finish time):
-- counting all of them read the whole table on every refresh (190 ms at 1M jobs).

-- name: depth
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
WHERE j.status IN ('succeeded', 'cancelled')
  AND j.finished_at >= CAST(:since AS timestamptz)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
