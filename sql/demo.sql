-- The demo's view of its queue (reconciler demo), and its accounting at the end.

-- name: enqueue
SELECT enqueue(kind => :kind, priority => CAST(:priority AS smallint), queue => :queue)

-- name: claim
SELECT id, attempt, claim_token FROM claim(:worker, NULL, 1)

-- name: heartbeat
SELECT heartbeat(:id, :token)

-- name: complete
SELECT complete(:id, :token)

-- name: fail
SELECT fail(:id, :token, CAST(:error AS jsonb))

-- name: counts
SELECT status, count(*) AS n FROM jobs GROUP BY status

-- name: recent
SELECT e.job_id, e.from_status, e.to_status, e.actor, e.at
FROM job_events e
WHERE e.actor LIKE 'reconciler:%'
ORDER BY e.id DESC
LIMIT :n

-- name: moved
SELECT e.from_status || '->' || e.to_status AS transition, count(*) AS n
FROM job_events e
WHERE e.actor LIKE 'reconciler:%'
GROUP BY 1
ORDER BY 2 DESC

-- name: last_runs
SELECT DISTINCT ON (task) task, status, transitions, started_at,
       count(*) OVER (PARTITION BY task) AS runs
FROM runs
ORDER BY task, started_at DESC

-- name: job_ids
SELECT id FROM jobs ORDER BY id

-- name: history_mismatches
-- Jobs whose latest event does not end in their current status: a transition
-- written without its event, or the other way round. Nothing should be here.
SELECT count(*) FROM jobs j
WHERE j.status IS DISTINCT FROM (
    SELECT e.to_status FROM job_events e WHERE e.job_id = j.id ORDER BY e.id DESC LIMIT 1
)
