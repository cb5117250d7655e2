-- `reconciler pause` / `resume`: rows of paused_queues, which claim() honours
-- (it hands out no job of a paused queue; a row '*' pauses every queue).
-- Maintenance tasks ignore pauses. Each change writes its queue_pause_events
-- rows in the same statement, in queue order (ids follow it).

-- name: list
-- What '*' covers counts every queued job.
SELECT p.queue, p.paused_at, p.paused_by, p.reason,
       (SELECT count(*) FROM jobs j
        WHERE j.status = 'queued' AND (j.queue = p.queue OR p.queue = '*')) AS queued
FROM paused_queues p
ORDER BY p.queue <> '*', p.queue

-- name: without_jobs
SELECT q.name FROM unnest(CAST(:queues AS text[])) AS q (name)
WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.queue = q.name)

-- name: wait_for_claims
-- A pause is strict: claim() holds paused_queues' ACCESS SHARE lock from its
-- read of the pauses to its commit, so this lock waits for every claim under
-- way (each has committed, or rolled back, before the pause is written) and
-- every later claim waits for the pause and sees it. Bounded by the
-- transaction's lock_timeout: a long transaction that called claim() makes
-- the pause fail rather than stall every worker behind it.
LOCK TABLE paused_queues IN ACCESS EXCLUSIVE MODE

-- name: pause
WITH paused AS (
    INSERT INTO paused_queues (queue, paused_at, paused_by, reason)
    SELECT q.name, CAST(:now AS timestamptz), CAST(:actor AS text), CAST(:reason AS text)
    FROM unnest(CAST(:queues AS text[])) AS q (name)
    ON CONFLICT (queue) DO NOTHING
    RETURNING queue, paused_at, paused_by, reason
), event AS (
    INSERT INTO queue_pause_events (queue, action, at, actor, reason)
    SELECT p.queue, 'pause', p.paused_at, p.paused_by, p.reason FROM paused p ORDER BY p.queue
)
SELECT p.queue FROM paused p

-- name: resume
-- :queues NULL resumes every paused queue, '*' included.
WITH resumed AS (
    DELETE FROM paused_queues p
    WHERE CAST(:queues AS text[]) IS NULL OR p.queue = ANY (CAST(:queues AS text[]))
    RETURNING p.queue
), event AS (
    INSERT INTO queue_pause_events (queue, action, at, actor, reason)
    SELECT r.queue, 'resume', CAST(:now AS timestamptz), CAST(:actor AS text),
           CAST(:reason AS text)
    FROM resumed r
    ORDER BY r.queue
)
SELECT r.queue FROM resumed r

-- name: history
-- Newest first; for :queues (NULL: any), also the pauses of every queue ('*').
SELECT e.id, e.at, e.queue, e.action, e.actor, e.reason
FROM queue_pause_events e
WHERE CAST(:queues AS text[]) IS NULL OR e.queue = ANY (CAST(:queues AS text[])) OR e.queue = '*'
ORDER BY e.id DESC
LIMIT :limit
