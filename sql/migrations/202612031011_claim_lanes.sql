-- claim() walks jobs_queue_claim_idx (202612031010) in one lane per queue and
-- priority, so its cost no longer grows with other queues', paused queues' or
-- future jobs (issue 11). CREATE OR REPLACE keeps the function's grants.

-- claim(): take up to n (at most 1000) due jobs, highest priority first, never
-- waiting on a row another worker holds, skipping paused queues (all of them
-- while paused_queues has the row '*', reconciler pause --all). Each job comes
-- with a fresh random claim_token: the worker passes it to heartbeat, complete
-- and fail; only its hash is stored.
--
-- Its cost depends on n and on the number of queues, never on the jobs of
-- other queues, of paused queues, or scheduled in the future: it walks
-- jobs_queue_claim_idx (queue, priority, run_at, id) in one lane per (queue,
-- priority) it may serve, each lane up to n due rows in run_at order, and
-- merges the lanes by priority, run_at, id. The queues are the caller's, or
-- (queues NULL) every queue that has queued jobs, found by a skip scan of the
-- same index (one probe per queue; ordered by its whole key so that no other
-- index of jobs, holding running or failed jobs too, serves it); paused queues
-- get no lane. A lane locks
-- its rows FOR UPDATE SKIP LOCKED before the merge, so a claim may hold up to
-- n rows of each other lane until it commits (other workers skip them and take
-- the next); with one queue and one priority in use, that is none.
--
-- plpgsql with plan_cache_mode = force_custom_plan, and the paused queues read
-- first into a constant: the query is planned with the caller's n and queues
-- and the actual list of paused queues (the branch for queues NULL is not even
-- run when queues are given). Planned without them, PostgreSQL may read and
-- sort every due job to hand out one (tests/integration/test_indexes.py).
--
-- Reading paused_queues takes its ACCESS SHARE lock until the claim commits;
-- `reconciler pause` takes ACCESS EXCLUSIVE before it adds its row, so a pause
-- waits for claims under way, and no claim commits after it that missed it.
CREATE OR REPLACE FUNCTION claim(worker text, queues text[] DEFAULT NULL, n integer DEFAULT 1)
RETURNS TABLE (
    id bigint, queue text, kind text, tenant_id text, priority smallint, payload jsonb,
    attempt integer, max_attempts integer, run_at timestamptz, created_at timestamptz,
    idempotency_key text, claim_token uuid
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    paused text[] := ARRAY(SELECT p.queue FROM paused_queues p);
BEGIN
    IF coalesce(claim.worker, '') = '' THEN
        RAISE EXCEPTION 'claim() needs a worker name'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass worker => ''host:pid'' or any name unique to the worker';
    END IF;
    IF claim.n NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'claim() takes 0 to 1000 jobs at a time, not %', claim.n
            USING ERRCODE = 'check_violation',
                  HINT = 'claim more often rather than more at once';
    END IF;
    IF '*' = ANY (paused) THEN
        RETURN;  -- every queue is paused (reconciler pause --all)
    END IF;
    RETURN QUERY
    WITH RECURSIVE every_queue AS (
        (SELECT j.queue FROM jobs j WHERE j.status = 'queued'
         ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
        UNION ALL
        SELECT (SELECT j.queue FROM jobs j WHERE j.status = 'queued' AND j.queue > e.queue
                ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
        FROM every_queue e WHERE e.queue IS NOT NULL
    ), lanes AS (
        SELECT DISTINCT q.queue FROM unnest(claim.queues) q (queue)
        WHERE claim.queues IS NOT NULL
        UNION
        SELECT e.queue FROM every_queue e WHERE claim.queues IS NULL AND e.queue IS NOT NULL
    ), picked AS (
        SELECT c.id, gen_random_uuid() AS token
        FROM lanes l
        CROSS JOIN generate_series(0, 4) p (priority)
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.run_at FROM jobs j
            WHERE j.status = 'queued' AND j.queue = l.queue AND j.priority = p.priority
              AND j.run_at <= now()
            ORDER BY j.run_at, j.id
            LIMIT coalesce(claim.n, 1)
            FOR UPDATE SKIP LOCKED
        ) c
        WHERE l.queue <> ALL (paused)
        ORDER BY c.priority, c.run_at, c.id
        LIMIT coalesce(claim.n, 1)
    ), claimed AS (
        UPDATE jobs j
        SET status = 'running', attempt = j.attempt + 1, locked_by = claim.worker,
            locked_at = now(), heartbeat_at = now(), started_at = now(), finished_at = NULL,
            claim_token_hash = sha256(uuid_send(p.token))
        FROM picked p
        WHERE j.id = p.id AND j.status = 'queued'
        RETURNING j.id, j.queue, j.kind, j.tenant_id, j.priority, j.payload, j.attempt,
                  j.max_attempts, j.run_at, j.created_at, j.idempotency_key, p.token
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
        SELECT c.id, 'queued', 'running', now(), 'worker:' || claim.worker,
               jsonb_build_object('attempt', c.attempt)
        FROM claimed c
    )
    SELECT c.id, c.queue, c.kind, c.tenant_id, c.priority, c.payload, c.attempt,
           c.max_attempts, c.run_at, c.created_at, c.idempotency_key, c.token
    FROM claimed c ORDER BY c.priority, c.run_at, c.id;
END
$$;

