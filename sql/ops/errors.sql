-- `reconciler errors`: failed attempts of a recent stretch of time, grouped by
-- message and kind. Read from job_events (one row per failed attempt, even when
-- the job has since been retried), joined to the job for its kind. A lost
-- worker (running -> stale) counts as a failure without a message of its own.
-- Binds: :since, :limit and the job filter.

-- name: by_message
SELECT CASE WHEN e.to_status = 'stale' THEN '(no heartbeat: worker lost)'
            ELSE coalesce(e.reason -> 'error' ->> 'message', e.reason ->> 'error',
                          '(no error recorded)') END AS error,
       j.kind,
       count(*) AS failures,
       count(DISTINCT e.job_id) AS jobs,
       min(e.at) AS first_at,
       max(e.at) AS last_at,
       max(e.job_id) AS example_id
FROM job_events e
JOIN jobs j ON j.id = e.job_id
WHERE e.from_status = 'running'
  AND e.to_status IN ('failed', 'stale')
  AND e.at >= CAST(:since AS timestamptz)
  AND /*job_filter*/
GROUP BY 1, 2
ORDER BY count(*) DESC, 1, 2
LIMIT :limit
