-- `reconciler pause` / `resume`: rows of paused_queues, which claim() honours
-- (it hands out no job of a paused queue). Maintenance tasks ignore pauses.

-- name: list
SELECT p.queue, p.paused_at, p.paused_by, p.reason,
       (SELECT count(*) FROM jobs j WHERE j.queue = p.queue AND j.status = 'queued') AS queued
FROM paused_queues p
ORDER BY p.queue

-- name: known_queues
-- Every queue that has a job now (one scan of jobs: there is no index on queue).
SELECT DISTINCT j.queue FROM jobs j ORDER BY 1

-- name: without_jobs
SELECT q.name FROM unnest(CAST(:queues AS text[])) AS q (name)
WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.queue = q.name)

-- name: pause
INSERT INTO paused_queues (queue, paused_at, paused_by, reason)
SELECT q.name, CAST(:now AS timestamptz), :actor, :reason
FROM unnest(CAST(:queues AS text[])) AS q (name)
ON CONFLICT (queue) DO NOTHING
RETURNING queue

-- name: resume
DELETE FROM paused_queues WHERE queue = ANY (CAST(:queues AS text[])) RETURNING queue
