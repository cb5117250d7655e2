-- The transition guard (jobs_before_update) is no longer called for the
-- workers' own changes (issue 11; README, Scaling). A plpgsql row trigger
-- costs a call, the row copied into a record and formed again, and a lookup in
-- transitions, twice per job on the hot path: measured with perf and pgbench
-- (python -m tests.bench.peers), the trigger alone was about a tenth of a claim
-- and a completion. Its WHEN clause now lets through, without a call, an
-- update that would change nothing in it: updated_at already now(), no
-- attempt lowered, no token on a job that is not running, and either no status
-- change or one of the three the workers make (queued -> running,
-- running -> succeeded, running -> failed; all in transitions, which a test
-- pins). claim(), heartbeat(), complete() and fail() now set updated_at
-- themselves. Every other writer (the tasks, the operators, SQL typed into
-- psql) is checked as before, against the table.
--
-- DROP and CREATE TRIGGER in one transaction: the table's ACCESS EXCLUSIVE lock
-- for a moment (migrate waits at most RECONCILER_MIGRATE_LOCK_TIMEOUT for it).

DROP TRIGGER jobs_before_update ON jobs;
CREATE TRIGGER jobs_before_update BEFORE UPDATE ON jobs
    -- Not called where it would change nothing: a writer that sets updated_at to
    -- now() itself, lowers no attempt, leaves no token on a job that is not running,
    -- and makes no status change but a claim (queued -> running), a completion or
    -- a failure (running -> succeeded, failed), all three in transitions (a test
    -- pins it). The workers' functions are such writers; any other change is
    -- checked against the table as before.
    FOR EACH ROW WHEN (
        NEW.updated_at IS DISTINCT FROM now()
        OR NEW.attempt < OLD.attempt
        OR (NEW.status <> 'running' AND NEW.claim_token_hash IS NOT NULL)
        OR (NEW.status IS DISTINCT FROM OLD.status
            AND NOT (OLD.status = 'queued' AND NEW.status = 'running')
            AND NOT (OLD.status = 'running' AND NEW.status IN ('succeeded', 'failed'))))
    EXECUTE FUNCTION jobs_before_update();

CREATE OR REPLACE FUNCTION claim_lanes(worker text, queues text[], n integer, paused text[])
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
            locked_at = now(), heartbeat_at = now(), updated_at = now(), started_at = now(), finished_at = NULL,
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
            locked_at = now(), heartbeat_at = now(), updated_at = now(), started_at = now(), finished_at = NULL,
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

CREATE OR REPLACE FUNCTION heartbeat(job_id bigint, claim_token uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    UPDATE jobs j SET heartbeat_at = now(), updated_at = now()
    WHERE j.id = heartbeat.job_id AND j.status IS NOT DISTINCT FROM 'running'
      AND j.claim_token_hash = sha256(uuid_send(heartbeat.claim_token));
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION complete(job_id bigint, claim_token uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    WITH done AS (
        UPDATE jobs j
        SET status = 'succeeded', finished_at = now(), updated_at = now(), locked_by = NULL, locked_at = NULL,
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
        SET status = 'failed', finished_at = now(), updated_at = now(), locked_by = NULL, locked_at = NULL,
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
