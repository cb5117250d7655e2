-- `reconciler jobs ...`: list, show, and the operator's changes (requeue,
-- cancel). Queries with /*job_filter*/ get the filter of sql/ops/filter.sql.
--
-- A change binds :now (the command's database clock, read once), :batch_size,
-- :actor (cli:<os user> or --actor), :run_id, :command (e.g. 'jobs requeue'),
-- :note (--reason, or NULL) and :eligible (the statuses the change takes).
-- Each is one statement per batch: pick with FOR UPDATE, change,
-- and write one job_events row per job in the same statement. A changed job
-- leaves :eligible, so the next batch never sees it again. /*skip_locked*/ is
-- SKIP LOCKED for a filter (a bulk change never waits on a worker) and nothing
-- for job ids (the operator named them: wait for them up to the lock timeout,
-- then say which were not changed): reconciler.sqlfiles.locking.

-- name: show
-- Every column but claim_token_hash: a token's hash is nobody's business.
SELECT j.id, j.queue, j.kind, j.tenant_id, j.priority, j.payload, j.status, j.attempt,
       j.attempt_base, j.max_attempts, j.run_at, j.locked_by, j.locked_at, j.heartbeat_at,
       j.started_at, j.finished_at, j.created_at, j.updated_at, j.last_error,
       j.idempotency_key,
       CAST(:now AS timestamptz) - /*last_seen*/ AS heartbeat_age,
       EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue IN (j.queue, '*')) AS queue_paused
FROM jobs j WHERE j.id = :id

-- name: events
SELECT e.id, e.at, e.from_status, e.to_status, e.actor, e.reason, e.run_id
FROM job_events e WHERE e.job_id = :id ORDER BY e.id

-- name: cancel
-- queued, running, failed or stale -> cancelled. A running job loses its lock:
-- its worker's heartbeat/complete/fail return false from then on (fenced out).
WITH picked AS (
    SELECT j.id, j.status AS from_status, j.locked_by, j.attempt
    FROM jobs j
    WHERE j.status = ANY (CAST(:eligible AS text[]))
      AND /*job_filter*/
    ORDER BY j.id
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), moved AS (
    UPDATE jobs j
    SET status = 'cancelled', finished_at = CAST(:now AS timestamptz),
        locked_by = NULL, locked_at = NULL
    FROM picked p
    WHERE j.id = p.id
    RETURNING j.id, p.from_status, p.locked_by, p.attempt
), events AS (
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT m.id, m.from_status, 'cancelled', CAST(:now AS timestamptz), :actor,
           jsonb_strip_nulls(jsonb_build_object(
               'command', CAST(:command AS text),
               'attempt', m.attempt,
               'worker', m.locked_by,
               'note', CAST(:note AS text))),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, from_status, 'cancelled' AS to_status FROM moved

-- name: mark_succeeded
-- queued, running, failed, stale or dead -> succeeded, by an operator's hand,
-- with a reason (runbook 001: "mark as succeeded"). A running job loses its
-- lock and claim: its worker's heartbeat/complete/fail return false from then on.
WITH picked AS (
    SELECT j.id, j.status AS from_status, j.locked_by, j.attempt
    FROM jobs j
    WHERE j.status = ANY (CAST(:eligible AS text[]))
      AND /*job_filter*/
    ORDER BY j.id
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), moved AS (
    UPDATE jobs j
    SET status = 'succeeded', finished_at = CAST(:now AS timestamptz),
        locked_by = NULL, locked_at = NULL, claim_token_hash = NULL
    FROM picked p
    WHERE j.id = p.id
    RETURNING j.id, p.from_status, p.locked_by, p.attempt
), events AS (
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT m.id, m.from_status, 'succeeded', CAST(:now AS timestamptz), :actor,
           jsonb_strip_nulls(jsonb_build_object(
               'command', CAST(:command AS text),
               'attempt', m.attempt,
               'worker', m.locked_by,
               'note', CAST(:note AS text))),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, from_status, 'succeeded' AS to_status FROM moved
