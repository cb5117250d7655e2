-- dead-letter export (reconciler/ops/export.py): pages of dead jobs with their events,
-- and the record of what an export holds (the backup rule reads it: sql/backup.sql).

-- name: export_page
-- Keyset pages in id order; each job with its whole history (every column
-- but claim_token_hash).
SELECT j.id, j.queue, j.kind, j.tenant_id, j.priority, j.payload, j.status, j.attempt,
       j.attempt_base, j.max_attempts, j.run_at, j.locked_by, j.locked_at, j.heartbeat_at,
       j.started_at, j.finished_at, j.created_at, j.updated_at, j.last_error,
       j.idempotency_key,
       (SELECT coalesce(jsonb_agg(to_jsonb(e) - 'job_id' ORDER BY e.id), '[]'::jsonb)
        FROM job_events e WHERE e.job_id = j.id) AS events
FROM jobs j
WHERE j.status = 'dead'
  AND j.id > :after
  AND /*job_filter*/
ORDER BY j.id
LIMIT :page

-- name: record_export
-- Written only once the file and its folder are durable (or for stdout, with
-- durable false: recorded, but no backup).
INSERT INTO ops_exports (exported_at, actor, destination, filter, job_count, durable)
VALUES (CAST(:now AS timestamptz), :actor, :destination, CAST(:filter AS jsonb), :job_count,
        CAST(:durable AS boolean))
RETURNING id

-- name: record_exported_jobs
-- A job deleted since it was read is left out (it no longer needs a backup).
INSERT INTO ops_exported_jobs (export_id, job_id, job_updated_at)
SELECT CAST(:export_id AS bigint), x.job_id, x.updated_at
FROM unnest(CAST(:job_ids AS bigint[]), CAST(:updated AS timestamptz[])) AS x (job_id, updated_at)
JOIN jobs j ON j.id = x.job_id
