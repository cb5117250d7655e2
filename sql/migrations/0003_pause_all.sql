-- 0003_pause_all: a pause of every queue, and a record of every pause and resume.
--
-- A row of paused_queues whose queue is '*' pauses every queue, including a
-- queue first used after the pause: the runbooks' "stop all job processing"
-- (reconciler pause --all). claim() checks for it before its query, so the
-- query itself, and its plan, are unchanged.
--
-- Runs with search_path set to the reconciler's schema, then pg_temp (the
-- migration runner does that), like 0001: claim() captures that path again
-- with SET search_path FROM CURRENT.

COMMENT ON COLUMN paused_queues.queue IS 'a queue, or * for every queue (pause --all)';

-- One row per pause and resume, written in the same statement as the change
-- to paused_queues (sql/ops/pause.sql); reconciler pause --history lists them.
CREATE TABLE queue_pause_events (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue  text        NOT NULL,       -- '*' for every queue
    action text        NOT NULL CHECK (action IN ('pause', 'resume')),
    at     timestamptz NOT NULL,
    actor  text        NOT NULL,       -- cli:alice, or --actor
    reason text
);

-- The pauses in force now are the history's first rows.
INSERT INTO queue_pause_events (queue, action, at, actor, reason)
SELECT p.queue, 'pause', p.paused_at, p.paused_by, p.reason
FROM paused_queues p
ORDER BY p.paused_at, p.queue;

-- CREATE OR REPLACE keeps claim()'s owner and grants, but sets every other
-- attribute to what it states. Where claim() already runs as its owner
-- (SECURITY DEFINER, migration 0201, in a schema that had it before this
-- one), remember that here and restore it below.
SELECT set_config('reconciler.claim_security_definer', p.prosecdef::text, true)
FROM pg_proc p
WHERE p.oid = to_regprocedure('claim(text, text[], integer)');

-- claim(): as in 0001 (see its comment on the plan), and nothing at all while
-- every queue is paused.
CREATE OR REPLACE FUNCTION claim(worker text, queues text[] DEFAULT NULL, n integer DEFAULT 1)
RETURNS SETOF jobs
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    paused text[] := ARRAY(SELECT p.queue FROM paused_queues p);
BEGIN
    IF coalesce(claim.worker, '') = '' THEN
        RAISE EXCEPTION 'claim() needs a worker name'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass worker => ''host:pid'' or any name unique to the worker';
    END IF;
    IF '*' = ANY (paused) THEN
        RETURN;  -- every queue is paused (reconciler pause --all)
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT j.id FROM jobs j
        WHERE j.status = 'queued'
          AND j.run_at <= now()
          AND (claim.queues IS NULL OR j.queue = ANY (claim.queues))
          AND j.queue <> ALL (paused)
        ORDER BY j.priority, j.run_at, j.id
        LIMIT greatest(coalesce(claim.n, 1), 0)
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE jobs j
        SET status = 'running', attempt = j.attempt + 1, locked_by = claim.worker,
            locked_at = now(), heartbeat_at = now(), started_at = now(), finished_at = NULL
        FROM picked
        WHERE j.id = picked.id AND j.status = 'queued'
        RETURNING j.*
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
        SELECT c.id, 'queued', 'running', now(), 'worker:' || claim.worker,
               jsonb_build_object('attempt', c.attempt)
        FROM claimed c
    )
    SELECT * FROM claimed c ORDER BY c.priority, c.run_at, c.id;
END
$$;

DO $$
BEGIN
    IF current_setting('reconciler.claim_security_definer', true) = 'true' THEN
        ALTER FUNCTION claim(text, text[], integer) SECURITY DEFINER;
    END IF;
END
$$;
