-- The tasks' statements for a queue table the reconciler does not own (a
-- profile, reconciler/profiles/). reconciler/profiles/statements.py fills
-- the {{markers}}: table and column names always quoted identifiers, status
-- values always quoted literals (so a partial index on a status serves the
-- statement), {{status_type}} the status column's type as the catalog names
-- it; optional columns become NULL, a constant, or nothing. Values that
-- change per run are binds: :now (the run's database clock), :batch_size,
-- :actor, :run_id, :profile, :table_name.
--
-- The rules are the native tasks' (sql/tasks/): FOR UPDATE SKIP LOCKED (an
-- operator who names ids waits: /*skip_locked*/), PostgreSQL re-checks every
-- locked row against the WHERE clause, at most :batch_size rows per
-- statement, and every change is written to the ledger by the statement
-- that makes it.

-- name: timeout_s
-- The heartbeat timeout of a job: its kind's override, else its queue's, else the default
-- (RECONCILER_HEARTBEAT_TIMEOUT[_OVERRIDES]); a table without those columns: the default.
coalesce(
    (SELECT k.s FROM unnest(CAST(:kind_names AS text[]),
                            CAST(:kind_timeouts_s AS double precision[])) AS k (n, s)
     WHERE k.n = {{kind}}::text),
    (SELECT q.s FROM unnest(CAST(:queue_names AS text[]),
                            CAST(:queue_timeouts_s AS double precision[])) AS q (n, s)
     WHERE q.n = {{queue}}::text),
    CAST(:default_timeout_s AS double precision)
)

-- name: mark_stale
-- Running jobs silent for longer than their heartbeat timeout, by the heartbeat on
-- their own row: to stale, or (a table with no stale state) straight back to queued
-- while attempts are left, else to dead (or failed). The lock's re-check of the WHERE
-- clause sees a heartbeat that committed after this statement's snapshot.
WITH candidates AS (
    SELECT j.{{id}} AS id, {{last_seen}} AS last_seen, {{worker}} AS worker,
           {{attempts_used}} AS attempts_used, {{max_attempts}} AS max_attempts,
           {{timeout_s}} AS timeout_s
    FROM {{table}} j
    WHERE j.{{status}} = {{running}}
      AND (CAST(:only_ids AS text[]) IS NULL OR j.{{id}}::text = ANY (CAST(:only_ids AS text[])))
      AND {{last_seen}}
          < CAST(:now AS timestamptz) - make_interval(secs => CAST(:min_timeout_s AS double precision))
      AND {{last_seen}} < CAST(:now AS timestamptz) - make_interval(secs => {{timeout_s}})
    ORDER BY {{last_seen}}
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), decided AS (
    SELECT c.*,
           CASE WHEN {{has_stale}} THEN {{stale}}
                WHEN c.attempts_used < c.max_attempts THEN {{queued}}
                ELSE {{exhausted}} END AS to_status
    FROM candidates c
), moved AS (
    UPDATE {{table}} j
    SET {{status}} = CAST(d.to_status AS {{status_type}}){{set_left_running}}
    FROM decided d
    WHERE j.{{id}} = d.id
    RETURNING j.{{id}}::text AS id, d.to_status, d.worker, d.last_seen, d.attempts_used,
              d.max_attempts, d.timeout_s
), ledger AS (
    INSERT INTO ledger (profile, table_name, job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT :profile, :table_name, m.id, {{running}}, m.to_status, CAST(:now AS timestamptz), :actor,
           jsonb_build_object(
               'worker', m.worker, 'attempts', m.attempts_used, 'max_attempts', m.max_attempts,
               'last_heartbeat_at', m.last_seen,
               -- A hand-written -infinity heartbeat has no age (subtracting it is an error).
               'heartbeat_age_s', CASE WHEN isfinite(m.last_seen) THEN round(extract(epoch FROM
                   CAST(:now AS timestamptz) - m.last_seen)::numeric, 3) END,
               'timeout_s', m.timeout_s),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, {{running}} AS from_status, to_status FROM moved

-- name: mark_stale_by_workers
-- The same, when heartbeats live on a workers table. The workers' rows are not the
-- rows this statement updates, so PostgreSQL's re-check would not cover them: `seen`
-- locks every candidate's worker row FOR SHARE, which reads its newest committed
-- version (a heartbeat that committed after this statement's snapshot is seen there)
-- and makes a heartbeat that comes later wait until this transaction has ended. Only
-- jobs whose worker is gone, or still silent under that lock, move.
WITH candidates AS (
    SELECT j.{{id}} AS id, j.{{worker_column}} AS worker,
           {{attempts_used}} AS attempts_used, {{max_attempts}} AS max_attempts,
           {{timeout_s}} AS timeout_s
    FROM {{table}} j
    WHERE j.{{status}} = {{running}}
      AND (CAST(:only_ids AS text[]) IS NULL OR j.{{id}}::text = ANY (CAST(:only_ids AS text[])))
      AND NOT EXISTS (
          SELECT 1 FROM {{workers}} w
          WHERE w.{{worker_id}} = j.{{worker_column}}
            AND w.{{worker_heartbeat}}
                >= CAST(:now AS timestamptz) - make_interval(secs => {{timeout_s}}))
    ORDER BY j.{{id}}
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), seen AS (
    SELECT w.{{worker_id}} AS worker, w.{{worker_heartbeat}} AS last_seen
    FROM {{workers}} w
    WHERE w.{{worker_id}} IN (SELECT c.worker FROM candidates c)
    FOR SHARE OF w
), decided AS (
    SELECT c.*, s.last_seen,
           CASE WHEN {{has_stale}} THEN {{stale}}
                WHEN c.attempts_used < c.max_attempts THEN {{queued}}
                ELSE {{exhausted}} END AS to_status
    FROM candidates c
    LEFT JOIN seen s ON s.worker = c.worker
    WHERE s.last_seen IS NULL
       OR s.last_seen < CAST(:now AS timestamptz) - make_interval(secs => c.timeout_s)
), moved AS (
    UPDATE {{table}} j
    SET {{status}} = CAST(d.to_status AS {{status_type}}){{set_left_running}}
    FROM decided d
    WHERE j.{{id}} = d.id
    RETURNING j.{{id}}::text AS id, d.to_status, d.worker, d.last_seen, d.attempts_used,
              d.max_attempts, d.timeout_s
), ledger AS (
    INSERT INTO ledger (profile, table_name, job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT :profile, :table_name, m.id, {{running}}, m.to_status, CAST(:now AS timestamptz), :actor,
           jsonb_build_object(
               'worker', m.worker, 'worker_gone', m.last_seen IS NULL,
               'attempts', m.attempts_used, 'max_attempts', m.max_attempts,
               'last_heartbeat_at', m.last_seen,
               -- A hand-written -infinity heartbeat has no age (subtracting it is an error).
               'heartbeat_age_s', CASE WHEN isfinite(m.last_seen) THEN round(extract(epoch FROM
                   CAST(:now AS timestamptz) - m.last_seen)::numeric, 3) END,
               'timeout_s', m.timeout_s),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, {{running}} AS from_status, to_status FROM moved

-- name: requeue
-- Failed or stale jobs with attempts left go back to queued once their backoff has
-- elapsed: the retry policy of their kind (retry_policies; else the default priority's),
-- counted from finished_at (a table without it: no backoff). attempts < max_attempts
-- separates this from dead-letter: no job is eligible for both.
WITH candidates AS (
    SELECT j.{{id}} AS id, j.{{status}}::text AS from_status, {{attempts}} AS attempts,
           b.delay
    FROM {{table}} j
    CROSS JOIN LATERAL (
        SELECT coalesce(
            (SELECT backoff({{attempts}}, p.initial_delay, p.max_delay, p.multiplier, p.jitter,
                            abs(hashtext(j.{{id}}::text))::bigint)
             FROM policy_for({{kind}}::text, CAST(2 AS smallint)) p),
            interval '0') AS delay
    ) b
    WHERE j.{{status}} IN ({{retryable}})
      AND {{attempts}} < {{max_attempts}}
      AND coalesce({{finished_at}}, '-infinity') + b.delay <= CAST(:now AS timestamptz)
      AND (CAST(:only_ids AS text[]) IS NULL OR j.{{id}}::text = ANY (CAST(:only_ids AS text[])))
    ORDER BY {{finished_at}}
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), moved AS (
    UPDATE {{table}} j
    SET {{status}} = {{queued}}{{set_requeued}}
    FROM candidates c
    WHERE j.{{id}} = c.id
    RETURNING j.{{id}}::text AS id, c.from_status, c.attempts, c.delay
), ledger AS (
    INSERT INTO ledger (profile, table_name, job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT :profile, :table_name, m.id, m.from_status, {{queued}}, CAST(:now AS timestamptz), :actor,
           jsonb_build_object('attempts', m.attempts,
                              'backoff_s', round(extract(epoch FROM m.delay)::numeric, 3)),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, from_status, {{queued}} AS to_status FROM moved

-- name: dead_letter
-- Failed or stale jobs with no attempts left move to the dead state.
WITH candidates AS (
    SELECT j.{{id}} AS id, j.{{status}}::text AS from_status, {{attempts}} AS attempts,
           {{max_attempts}} AS max_attempts
    FROM {{table}} j
    WHERE j.{{status}} IN ({{retryable}})
      AND {{attempts}} >= {{max_attempts}}
      AND (CAST(:only_ids AS text[]) IS NULL OR j.{{id}}::text = ANY (CAST(:only_ids AS text[])))
    ORDER BY j.{{id}}
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), moved AS (
    UPDATE {{table}} j
    SET {{status}} = {{dead}}{{set_dead}}
    FROM candidates c
    WHERE j.{{id}} = c.id
    RETURNING j.{{id}}::text AS id, c.from_status, c.attempts, c.max_attempts
), ledger AS (
    INSERT INTO ledger (profile, table_name, job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT :profile, :table_name, m.id, m.from_status, {{dead}}, CAST(:now AS timestamptz), :actor,
           jsonb_build_object('attempts', m.attempts, 'max_attempts', m.max_attempts),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, from_status, {{dead}} AS to_status FROM moved

-- name: purge
-- Finished jobs (one status per statement, :status) whose finished_at is older than
-- :horizon are deleted. A job with no finished_at is kept: nothing says it is old.
WITH candidates AS (
    SELECT j.{{id}} AS id
    FROM {{table}} j
    WHERE j.{{status}} = CAST(:status AS {{status_type}})
      AND {{finished_at}} < CAST(:horizon AS timestamptz)
    ORDER BY {{finished_at}}
    LIMIT :batch_size
    FOR UPDATE OF j SKIP LOCKED
), deleted AS (
    DELETE FROM {{table}} j
    USING candidates c
    WHERE j.{{id}} = c.id
    RETURNING j.{{id}}::text AS id
), ledger AS (
    INSERT INTO ledger (profile, table_name, job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT :profile, :table_name, d.id, :status, 'purged', CAST(:now AS timestamptz), :actor,
           jsonb_build_object('horizon', CAST(:horizon AS timestamptz)), CAST(:run_id AS bigint)
    FROM deleted d
)
SELECT id, CAST(:status AS text) AS from_status, 'purged' AS to_status FROM deleted
