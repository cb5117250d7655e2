-- mark-stale: running jobs with no sign of life within their heartbeat timeout
-- become stale, and lose their lock.
--
-- The heartbeat rule (last sign of life, timeout by kind, queue or default)
-- is sql/heartbeat.sql's, spliced in at /*last_seen*/ and
-- /*heartbeat_timeout_s*/ (reconciler/heartbeat.py), the same rule as
-- `reconciler workers` and `check` use.
--
-- Binds: :now (the run's database clock), :batch_size, :actor, :run_id, the
-- rule's binds (:min_timeout_s, the smallest timeout of any queue or kind, lets
-- the index on claim time narrow the scan to jobs claimed before it: a batch
-- reads at most the running jobs that old, never the finished backlog), and
-- :only_queues/:only_kinds/:only_tenants/:only_ids (NULL, or an operator's narrowing of
-- an ad hoc run).
--
-- Concurrency: FOR UPDATE SKIP LOCKED (/*skip_locked*/; for an operator's
-- reset-stuck by id, a plain FOR UPDATE that waits up to the lock timeout)
-- skips a row a worker is changing at this
-- moment (heartbeat, complete, fail), and for every row it does lock,
-- PostgreSQL re-evaluates this WHERE clause against the newest committed
-- version. A heartbeat that commits before the lock keeps its job; one that
-- arrives after waits, then finds the job no longer its own and returns false.

-- name: apply
WITH candidates AS (
    SELECT j.id, j.locked_by, j.attempt, /*last_seen*/ AS last_seen, t.timeout_s
    FROM jobs j
    CROSS JOIN LATERAL (SELECT /*heartbeat_timeout_s*/ AS timeout_s) t
    WHERE j.status = 'running'
      AND (CAST(:only_queues AS text[]) IS NULL OR j.queue = ANY (CAST(:only_queues AS text[])))
      AND (CAST(:only_kinds AS text[]) IS NULL OR j.kind = ANY (CAST(:only_kinds AS text[])))
      AND (CAST(:only_tenants AS text[]) IS NULL
           OR j.tenant_id = ANY (CAST(:only_tenants AS text[])))
      AND (CAST(:only_ids AS bigint[]) IS NULL OR j.id = ANY (CAST(:only_ids AS bigint[])))
      -- Claimed before the shortest timeout's horizon (a claim is never after the
      -- last sign of life): walks jobs_running_since_idx, which heartbeats never touch.
      -- (A row written by hand with heartbeat_at before locked_at is judged once
      -- locked_at is that old too.)
      AND coalesce(j.locked_at, '-infinity'::timestamptz)
          < CAST(:now AS timestamptz) - make_interval(secs => CAST(:min_timeout_s AS double precision))
      AND /*last_seen*/ < CAST(:now AS timestamptz) - make_interval(secs => t.timeout_s)
    ORDER BY coalesce(j.locked_at, '-infinity'::timestamptz), j.id
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), moved AS (
    UPDATE jobs j
    SET status = 'stale', locked_by = NULL, locked_at = NULL,
        finished_at = CAST(:now AS timestamptz)
    FROM candidates c
    WHERE j.id = c.id
    RETURNING j.id, c.locked_by AS worker, c.attempt, c.last_seen, c.timeout_s
), events AS (
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT m.id, 'running', 'stale', CAST(:now AS timestamptz), :actor,
           jsonb_build_object(
               'worker', m.worker,
               'attempt', m.attempt,
               'last_heartbeat_at', m.last_seen,
               'heartbeat_age_s',
                   round(extract(epoch FROM CAST(:now AS timestamptz) - m.last_seen)::numeric, 3),
               'timeout_s', m.timeout_s),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, 'running' AS from_status, 'stale' AS to_status FROM moved
