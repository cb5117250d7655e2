-- The workers' hot path, cheaper with every guarantee kept (issue 11; README,
-- Scaling). Measured with python -m tests.bench.peers and track_functions:
--
-- - claim() planned its whole query on every call (plan_cache_mode =
--   force_custom_plan, which also re-planned the transition trigger's lookup
--   inside it): about two thirds of its time. claim(n => 1), what workers call,
--   now runs one query with a constant LIMIT 1 whose cached generic plan walks
--   jobs_queue_claim_idx in order; the lanes (the caller's queues, or every queue
--   with queued jobs, less the paused ones) are read first into an array. Any
--   other n goes through claim_lanes(), the previous query, still planned with
--   the caller's values.
-- - complete(), fail() and heartbeat() were SQL functions, parsed and planned
--   on every call, and their "status = 'running' AND id = ..." let the planner
--   find the row through jobs_purge_idx (status, finished_at, id), reading every
--   running job's entry and the dead entries of every job claimed or finished
--   since the last vacuum: a cost that grew through a busy minute. They are
--   plpgsql now (plans cached per session) and find the row by its primary key
--   alone (the status test is written so that no index can serve it).
--
-- Same signatures, so grants stay; CREATE OR REPLACE also drops claim()'s
-- plan_cache_mode setting, which claim_lanes() now carries.

-- claim_lanes(): claim()'s query for any n (claim() calls it when n is not 1),
-- as it was: the lanes of the caller's queues (or of every queue with queued
-- jobs, found by a skip scan of jobs_queue_claim_idx) less the paused ones, each
-- lane up to n due rows in run_at order locked FOR UPDATE SKIP LOCKED, merged by
-- priority, run_at, id. Planned with the caller's n and queues and the actual
-- list of paused queues (force_custom_plan): planned without them, PostgreSQL
-- may read and sort every due job to hand out a few
-- (tests/integration/test_indexes.py). Not a door of its own: it runs with the
-- caller's rights, and only claim() (as the schema's owner) may call it.
CREATE FUNCTION claim_lanes(worker text, queues text[], n integer, paused text[])
RETURNS TABLE (
    id bigint, queue text, kind text, tenant_id text, priority smallint, payload jsonb,
    attempt integer, max_attempts integer, run_at timestamptz, created_at timestamptz,
    idempotency_key text, claim_token uuid
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE every_queue AS (
        (SELECT j.queue FROM jobs j WHERE j.status = 'queued'
         ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
        UNION ALL
        SELECT (SELECT j.queue FROM jobs j WHERE j.status = 'queued' AND j.queue > e.queue
                ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
        FROM every_queue e WHERE e.queue IS NOT NULL
    ), lanes AS (
        SELECT DISTINCT q.queue FROM unnest(claim_lanes.queues) q (queue)
        WHERE claim_lanes.queues IS NOT NULL
        UNION
        SELECT e.queue FROM every_queue e WHERE claim_lanes.queues IS NULL AND e.queue IS NOT NULL
    ), picked AS (
        SELECT c.id, gen_random_uuid() AS token
        FROM lanes l
        CROSS JOIN generate_series(0, 4) p (priority)
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.run_at FROM jobs j
            WHERE j.status = 'queued' AND j.queue = l.queue AND j.priority = p.priority
              AND j.run_at <= now()
            ORDER BY j.run_at, j.id
            LIMIT claim_lanes.n
            FOR UPDATE SKIP LOCKED
        ) c
        WHERE l.queue <> ALL (claim_lanes.paused)
        ORDER BY c.priority, c.run_at, c.id
        LIMIT claim_lanes.n
    ), claimed AS (
        UPDATE jobs j
        SET status = 'running', attempt = j.attempt + 1, locked_by = claim_lanes.worker,
            locked_at = now(), heartbeat_at = now(), started_at = now(), finished_at = NULL,
            claim_token_hash = sha256(uuid_send(p.token))
        FROM picked p
        WHERE j.id = p.id AND j.status = 'queued'
        RETURNING j.id, j.queue, j.kind, j.tenant_id, j.priority, j.payload, j.attempt,
                  j.max_attempts, j.run_at, j.created_at, j.idempotency_key, p.token
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
        SELECT c.id, 'queued', 'running', now(), 'worker:' || claim_lanes.worker,
               jsonb_build_object('attempt', c.attempt)
        FROM claimed c
    )
    SELECT c.id, c.queue, c.kind, c.tenant_id, c.priority, c.payload, c.attempt,
           c.max_attempts, c.run_at, c.created_at, c.idempotency_key, c.token
    FROM claimed c ORDER BY c.priority, c.run_at, c.id;
END
$$;

REVOKE EXECUTE ON FUNCTION claim_lanes(text, text[], integer, text[]) FROM PUBLIC;

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
-- get no lane. A lane locks its rows FOR UPDATE SKIP LOCKED before the merge,
-- so a claim may hold up to n rows of each other lane until it commits (other
-- workers skip them and take the next); with one queue and one priority in
-- use, that is none.
--
-- n => 1, what a worker asks for, runs the query below: its LIMIT is a
-- constant, so its plan is made once per session and kept (a generic plan
-- walks each lane in index order and stops at its first row), and the lanes
-- come in as an array read just before. Any other n goes to claim_lanes(),
-- planned with the caller's values on every call.
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
AS $$
#variable_conflict use_column
DECLARE
    paused text[] := ARRAY(SELECT p.queue FROM paused_queues p);
    lanes text[];
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
    IF claim.n <> 1 THEN  -- n NULL is 1
        RETURN QUERY SELECT * FROM claim_lanes(claim.worker, claim.queues, claim.n, paused);
        RETURN;
    END IF;
    IF claim.queues IS NULL THEN
        lanes := ARRAY(
            WITH RECURSIVE every_queue AS (
                (SELECT j.queue FROM jobs j WHERE j.status = 'queued'
                 ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
                UNION ALL
                SELECT (SELECT j.queue FROM jobs j WHERE j.status = 'queued' AND j.queue > e.queue
                        ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
                FROM every_queue e WHERE e.queue IS NOT NULL
            )
            SELECT e.queue FROM every_queue e
            WHERE e.queue IS NOT NULL AND e.queue <> ALL (paused));
    ELSE
        lanes := ARRAY(SELECT DISTINCT q.queue FROM unnest(claim.queues) q (queue)
                       WHERE q.queue <> ALL (paused));
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT c.id, gen_random_uuid() AS token
        FROM unnest(lanes) l (queue)
        CROSS JOIN generate_series(0, 4) p (priority)
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.run_at FROM jobs j
            WHERE j.status = 'queued' AND j.queue = l.queue AND j.priority = p.priority
              AND j.run_at <= now()
            ORDER BY j.run_at, j.id
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        ) c
        ORDER BY c.priority, c.run_at, c.id
        LIMIT 1
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
    FROM claimed c;
END
$$;

-- heartbeat(), complete() and fail() find the job by its primary key alone:
-- "status IS NOT DISTINCT FROM 'running'" (status is never NULL, so it means
-- "= 'running'") is a test no index can serve, so the planner cannot walk
-- jobs_purge_idx or jobs_running_since_idx over every running job instead.
-- The fence is the same: nothing changes, and false comes back, unless the job
-- is still running under the claim that handed out this token. An UPDATE
-- re-checks its WHERE against the newest committed row before it writes, so a
-- job marked stale (or reclaimed, with a new token) meanwhile is left alone.
-- The event names the worker of the row as the statement found it (h): a
-- token's hash is set only by the claim that made the token, with the worker's
-- name, so every version of the row that still carries it has that name.

-- heartbeat(): true while the job is still running under this claim.
CREATE OR REPLACE FUNCTION heartbeat(job_id bigint, claim_token uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    UPDATE jobs j SET heartbeat_at = now()
    WHERE j.id = heartbeat.job_id AND j.status IS NOT DISTINCT FROM 'running'
      AND j.claim_token_hash = sha256(uuid_send(heartbeat.claim_token));
    RETURN FOUND;
END
$$;

-- complete(): running -> succeeded, only for the claim that holds the job.
CREATE OR REPLACE FUNCTION complete(job_id bigint, claim_token uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    WITH done AS (
        UPDATE jobs j
        SET status = 'succeeded', finished_at = now(), locked_by = NULL, locked_at = NULL,
            claim_token_hash = NULL
        FROM jobs h
        WHERE j.id = complete.job_id AND h.id = complete.job_id
          AND j.status IS NOT DISTINCT FROM 'running'
          AND j.claim_token_hash = sha256(uuid_send(complete.claim_token))
        RETURNING j.id, h.locked_by, j.attempt
    )
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
    SELECT d.id, 'running', 'succeeded', now(), 'worker:' || d.locked_by,
           jsonb_build_object('attempt', d.attempt)
    FROM done d;
    RETURN FOUND;
END
$$;

-- fail(): running -> failed with the error, only for the claim that holds the
-- job. The requeue or dead-letter task takes it from there. The error is kept
-- as a JSON object (a bare value becomes {"message": value}); one over 64 kB
-- is cut to {"message": its first 8192 characters, "truncated": true}.
CREATE OR REPLACE FUNCTION fail(job_id bigint, claim_token uuid, error jsonb DEFAULT '{}')
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    WITH given AS (
        SELECT CASE
            WHEN fail.error IS NULL THEN jsonb '{}'
            WHEN jsonb_typeof(fail.error) = 'object' THEN fail.error
            ELSE jsonb_build_object('message', fail.error)
        END AS error
    ), kept AS (
        SELECT CASE
            WHEN octet_length(g.error::text) <= 65536 THEN g.error
            ELSE jsonb_build_object(
                'message', left(coalesce(g.error ->> 'message', g.error::text), 8192),
                'truncated', true)
        END AS error
        FROM given g
    ), failed AS (
        UPDATE jobs j
        SET status = 'failed', finished_at = now(), locked_by = NULL, locked_at = NULL,
            claim_token_hash = NULL, last_error = k.error
        FROM jobs h, kept k
        WHERE j.id = fail.job_id AND h.id = fail.job_id
          AND j.status IS NOT DISTINCT FROM 'running'
          AND j.claim_token_hash = sha256(uuid_send(fail.claim_token))
        RETURNING j.id, h.locked_by, j.attempt, k.error
    )
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
    SELECT f.id, 'running', 'failed', now(), 'worker:' || f.locked_by,
           jsonb_build_object('attempt', f.attempt, 'error', f.error)
    FROM failed f;
    RETURN FOUND;
END
$$;
