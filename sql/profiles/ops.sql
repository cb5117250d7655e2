-- The operator's commands on a profile's table (reconciler/profiles/ops.py). Markers
-- as in table.sql; {{filter}} is the `filter` query below. Binds of the filter:
-- :f_statuses (the table's own status values), :f_ids, :f_queues, :f_kinds,
-- :f_tenants (text[] or NULL for "any"). A change runs as a one-off task through
-- reconciler.ops.changes.apply: previewed in a rolled-back transaction, confirmed,
-- then batch by batch, each row written to the ledger in the same statement.

-- name: filter
(CAST(:f_statuses AS text[]) IS NULL OR j.{{status}}::text = ANY (CAST(:f_statuses AS text[])))
AND (CAST(:f_ids AS text[]) IS NULL OR j.{{id}}::text = ANY (CAST(:f_ids AS text[])))
AND (CAST(:f_queues AS text[]) IS NULL OR {{queue}}::text = ANY (CAST(:f_queues AS text[])))
AND (CAST(:f_kinds AS text[]) IS NULL OR {{kind}}::text = ANY (CAST(:f_kinds AS text[])))
AND (CAST(:f_tenants AS text[]) IS NULL OR {{tenant}}::text = ANY (CAST(:f_tenants AS text[])))

-- name: list
-- Newest first (by created_at where the table has it, then id; else by id), at most
-- the limit; given a row's id and created_at (k_id, k_at), the keyset page after it.
SELECT j.{{id}}::text AS id, j.{{status}}::text AS status, {{queue}}::text AS queue,
       {{kind}}::text AS kind, {{tenant}}::text AS tenant, {{attempts}} AS attempts,
       {{created_at}} AS created_at, {{finished_at}} AS finished_at,
       left({{error}}::text, 200) AS error
FROM {{table}} j
WHERE {{filter}}
  AND (CAST(:k_id AS text) IS NULL OR {{after_key}})
ORDER BY {{newest_first}}
LIMIT :limit

-- name: show
SELECT to_jsonb(j) AS row FROM {{table}} j WHERE j.{{id}}::text = :id

-- name: history
SELECT at, from_status, to_status, actor, reason, run_id
FROM ledger
WHERE profile = :profile AND job_id = :id
ORDER BY id

-- name: stats
-- Jobs per status and queue; the oldest queued job's age (by run_at, else created_at).
SELECT j.{{status}}::text AS status, {{queue}}::text AS queue, count(*) AS jobs,
       -- An infinite timestamp has no age (subtracting it is an error): NULL.
       CASE WHEN isfinite(min({{waiting_since}}))
            THEN extract(epoch FROM CAST(:now AS timestamptz) - min({{waiting_since}})) END AS oldest_s
FROM {{table}} j
GROUP BY 1, 2
ORDER BY 1, 2

-- name: requeue
-- Jobs of :from_statuses (the table's values) back to queued, due at :due; attempts and
-- error reset unless :keep_attempts.
WITH candidates AS (
    SELECT j.{{id}} AS id, j.{{status}}::text AS from_status
    FROM {{table}} j
    WHERE {{filter}}
      AND j.{{status}}::text = ANY (CAST(:from_statuses AS text[]))
    ORDER BY j.{{id}}
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), moved AS (
    UPDATE {{table}} j
    SET {{status}} = {{queued}}{{set_requeued_by_hand}}
    FROM candidates c
    WHERE j.{{id}} = c.id
    RETURNING j.{{id}}::text AS id, c.from_status
), ledger AS (
    INSERT INTO ledger (profile, table_name, job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT :profile, :table_name, m.id, m.from_status, {{queued}}, CAST(:now AS timestamptz), :actor,
           jsonb_build_object('command', CAST(:command AS text), 'reason', CAST(:reason AS text),
                              'kept_attempts', CAST(:keep_attempts AS boolean),
                              'due_at', CAST(:due AS timestamptz)),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, from_status, {{queued}} AS to_status FROM moved

-- name: cancel
-- Queued, running, failed or stale jobs become cancelled. There is no fence in a table
-- the reconciler does not own: a running job's worker may still write its outcome.
WITH candidates AS (
    SELECT j.{{id}} AS id, j.{{status}}::text AS from_status
    FROM {{table}} j
    WHERE {{filter}}
      AND j.{{status}}::text = ANY (CAST(:from_statuses AS text[]))
    ORDER BY j.{{id}}
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), moved AS (
    UPDATE {{table}} j
    SET {{status}} = {{cancelled}}{{set_finished}}
    FROM candidates c
    WHERE j.{{id}} = c.id
    RETURNING j.{{id}}::text AS id, c.from_status
), ledger AS (
    INSERT INTO ledger (profile, table_name, job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT :profile, :table_name, m.id, m.from_status, {{cancelled}}, CAST(:now AS timestamptz), :actor,
           jsonb_build_object('command', CAST(:command AS text), 'reason', CAST(:reason AS text)),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, from_status, {{cancelled}} AS to_status FROM moved

-- name: errors
-- Failed and dead jobs grouped by error text and kind, since :since (by finished_at
-- where the table has it), most frequent first.
SELECT left({{error}}::text, 200) AS error, {{kind}}::text AS kind, count(*) AS jobs,
       max({{finished_at}}) AS last_at
FROM {{table}} j
WHERE j.{{status}}::text = ANY (CAST(:f_statuses AS text[]))
  AND ({{finished_at}} IS NULL OR {{finished_at}} >= CAST(:since AS timestamptz))
GROUP BY 1, 2
ORDER BY 3 DESC, 1
LIMIT :limit

-- name: workers
-- Each worker holding running jobs: how many, and its last sign of life.
SELECT {{worker}}::text AS worker, count(*) AS running, max({{last_seen}}) AS last_seen,
       CASE WHEN isfinite(max({{last_seen}}))
            THEN extract(epoch FROM CAST(:now AS timestamptz) - max({{last_seen}})) END AS silent_s
FROM {{table}} j
WHERE j.{{status}} = {{running}}
GROUP BY 1
ORDER BY 4 DESC NULLS FIRST

-- name: workers_by_table
-- Each worker of the heartbeat table, with the running jobs it holds.
SELECT w.{{worker_id}}::text AS worker, count(j.{{id}}) AS running,
       w.{{worker_heartbeat}} AS last_seen,
       CASE WHEN isfinite(w.{{worker_heartbeat}})
            THEN extract(epoch FROM CAST(:now AS timestamptz) - w.{{worker_heartbeat}}) END AS silent_s
FROM {{workers}} w
LEFT JOIN {{table}} j ON j.{{worker_column}} = w.{{worker_id}} AND j.{{status}} = {{running}}
GROUP BY w.{{worker_id}}, w.{{worker_heartbeat}}
ORDER BY 4 DESC

-- name: check
-- What `check` judges on a profile's table, in one read: running jobs silent past the
-- heartbeat timeout (by the row's heartbeat, or its worker's), queued jobs, the oldest
-- one's wait, dead ones.
SELECT
    count(*) FILTER (WHERE j.{{status}} = {{running}} AND {{silent}}) AS silent,
    count(*) FILTER (WHERE j.{{status}} = {{queued}}) AS queued,
    -- Finite times only: an app's -infinity "due at once" has no age to subtract.
    coalesce(extract(epoch FROM CAST(:now AS timestamptz)
                     - min({{waiting_since}}) FILTER (WHERE j.{{status}} = {{queued}}
                                                     AND isfinite({{waiting_since}}))), 0)
        AS oldest_queued_s,
    count(*) FILTER (WHERE j.{{status}} = {{dead}}) AS dead
FROM {{table}} j

-- name: statuses_of
-- The named jobs' statuses: a change refuses an id that is not there, or not in a state
-- it takes, before it starts.
SELECT j.{{id}}::text AS id, j.{{status}}::text AS status
FROM {{table}} j
WHERE j.{{id}}::text = ANY (CAST(:ids AS text[]))
