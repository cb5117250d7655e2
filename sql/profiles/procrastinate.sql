-- The Procrastinate profile's own statements (reconciler/profiles/procrastinate.py),
-- for Procrastinate 3.x's schema. The {{markers}} are filled as for table.sql; the
-- tables are procrastinate_jobs (j), procrastinate_workers (w) and
-- procrastinate_events, in the profile's schema ({{schema}}).
--
-- The rule: write nothing Procrastinate does not write itself. A job is moved only
-- through Procrastinate's own functions (procrastinate_retry_job_v*, _finish_job_v1),
-- so its triggers write its events; purge deletes jobs as its remove_old_jobs does,
-- and their events go by its own ON DELETE CASCADE.

-- name: mark_stale
-- `doing` jobs whose worker is gone (Procrastinate prunes stalled workers and nulls
-- worker_id) or silent past the heartbeat timeout: retried as Procrastinate retries a
-- job (status todo, attempts + 1, due after the retry policy's backoff), or failed
-- when the reconciler's retry policy for the task name has no attempt left.
-- procrastinate_workers is not the table this statement locks jobs in, so `seen` locks
-- each candidate's worker row FOR SHARE: that reads its newest committed heartbeat (one
-- that committed after this statement's snapshot is seen), and a later heartbeat waits
-- until this transaction ends. Only jobs whose worker is gone, or still silent under
-- that lock, move.
WITH candidates AS (
    SELECT j.id, j.worker_id AS worker, j.abort_requested, j.attempts + 1 AS attempts_used,
           {{max_attempts}} AS max_attempts, {{timeout_s}} AS timeout_s,
           b.delay, j.queueing_lock,
           -- A todo job holding the same queueing lock: Procrastinate allows one, so this
           -- job cannot go back to todo; the app's waiting twin will do the work.
           (SELECT o.id FROM {{table}} o
            WHERE j.queueing_lock IS NOT NULL AND o.queueing_lock = j.queueing_lock
              AND o.status = 'todo'
            LIMIT 1) AS queued_twin
    FROM {{table}} j
    CROSS JOIN LATERAL (
        SELECT coalesce(
            (SELECT backoff(j.attempts + 1, p.initial_delay, p.max_delay, p.multiplier,
                            p.jitter, j.id)
             FROM policy_for(j.task_name::text, CAST(2 AS smallint)) p),
            interval '0') AS delay
    ) b
    WHERE j.status = 'doing'
      AND (CAST(:only_ids AS text[]) IS NULL OR j.id::text = ANY (CAST(:only_ids AS text[])))
      AND NOT EXISTS (
          SELECT 1 FROM {{workers}} w
          WHERE w.id = j.worker_id
            AND w.last_heartbeat >= CAST(:now AS timestamptz) - make_interval(secs => {{timeout_s}}))
    ORDER BY j.id
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), seen AS (
    SELECT w.id AS worker, w.last_heartbeat AS last_seen
    FROM {{workers}} w
    WHERE w.id IN (SELECT c.worker FROM candidates c)
    FOR SHARE OF w
), decided AS (
    SELECT c.*, s.last_seen,
           -- A job whose abort was requested fails (procrastinate_retry_job does that too);
           -- so does one whose queueing lock a todo job holds, or an earlier one of this
           -- batch will hold once retried.
           CASE WHEN c.attempts_used < c.max_attempts AND NOT c.abort_requested
                     AND c.queued_twin IS NULL
                     AND (c.queueing_lock IS NULL
                          OR row_number() OVER (PARTITION BY c.queueing_lock ORDER BY c.id) = 1)
                THEN 'todo' ELSE 'failed' END AS to_status
    FROM candidates c
    LEFT JOIN seen s ON s.worker = c.worker
    WHERE s.last_seen IS NULL
       OR s.last_seen < CAST(:now AS timestamptz) - make_interval(secs => c.timeout_s)
), moved AS (
    SELECT d.*,
           CASE WHEN d.to_status = 'todo' OR d.abort_requested
                THEN (SELECT 1 FROM {{retry_function}}(d.id, CAST(:now AS timestamptz) + d.delay,
                                                       NULL, NULL, NULL))
                ELSE (SELECT 1 FROM {{finish_function}}(d.id, 'failed', false))
           END AS done
    FROM decided d
), ledger AS (
    INSERT INTO ledger (profile, table_name, job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT :profile, :table_name, m.id::text, 'doing', m.to_status, CAST(:now AS timestamptz), :actor,
           jsonb_build_object(
               'worker', m.worker, 'worker_gone', m.last_seen IS NULL,
               'abort_requested', m.abort_requested, 'queueing_lock_held_by', m.queued_twin,
               'attempts', m.attempts_used, 'max_attempts', m.max_attempts,
               'last_heartbeat_at', m.last_seen,
               -- A hand-written -infinity heartbeat has no age (subtracting it is an error).
               'heartbeat_age_s', CASE WHEN isfinite(m.last_seen) THEN round(extract(epoch FROM
                   CAST(:now AS timestamptz) - m.last_seen)::numeric, 3) END,
               'timeout_s', m.timeout_s,
               'retry_in_s', CASE WHEN m.to_status = 'todo'
                                  THEN round(extract(epoch FROM m.delay)::numeric, 3) END),
           CAST(:run_id AS bigint)
    FROM moved m
    WHERE m.done = 1
)
SELECT id::text AS id, 'doing' AS from_status, to_status FROM moved WHERE done = 1

-- name: purge
-- Finished jobs of one status (:status: succeeded, failed, cancelled or aborted) whose
-- last event is older than :horizon, in batches; their events go with them (the
-- events' own ON DELETE CASCADE), as with Procrastinate's remove_old_jobs, which does
-- the same in one unbatched DELETE. The walk starts from the finishing events
-- (of the same name as the status, older than the horizon, oldest first): with an index on
-- procrastinate_events (at) a run that finds nothing costs next to nothing, however
-- many finished jobs are still within retention. A job with any newer event is kept,
-- and so is one with no event at all: nothing says when it finished.
WITH candidates AS (
    SELECT j.id
    FROM {{events}} e
    JOIN {{table}} j ON j.id = e.job_id
    WHERE e.at < CAST(:horizon AS timestamptz)
      AND e.type::text = CAST(:status AS text)
      AND j.status = CAST(:status AS {{status_type}})
      AND NOT EXISTS (SELECT 1 FROM {{events}} n
                      WHERE n.job_id = j.id AND n.at >= CAST(:horizon AS timestamptz))
    ORDER BY e.at
    LIMIT :batch_size
    FOR UPDATE OF j SKIP LOCKED
), deleted AS (
    DELETE FROM {{table}} j
    USING candidates c
    WHERE j.id = c.id AND j.status = CAST(:status AS {{status_type}})
    RETURNING j.id::text AS id
), ledger AS (
    INSERT INTO ledger (profile, table_name, job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT :profile, :table_name, d.id, :status, 'purged', CAST(:now AS timestamptz), :actor,
           jsonb_build_object('horizon', CAST(:horizon AS timestamptz)), CAST(:run_id AS bigint)
    FROM deleted d
)
SELECT id, CAST(:status AS text) AS from_status, 'purged' AS to_status FROM deleted
