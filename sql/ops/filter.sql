-- The job filter of every operator's command (reconciler/ops/filter.py,
-- JobFilter): one predicate over the jobs row aliased j, put in place of the
-- /*job_filter*/ marker of a query. Every value is bound; NULL means "any".
--
-- Binds: :f_ids, :f_statuses, :f_queues, :f_kinds, :f_tenants (arrays),
-- :f_created_since, :f_finished_since, :f_finished_before (timestamps,
-- already counted back from the command's now).

-- name: jobs
(CAST(:f_ids AS bigint[]) IS NULL OR j.id = ANY (CAST(:f_ids AS bigint[])))
AND (CAST(:f_statuses AS text[]) IS NULL OR j.status = ANY (CAST(:f_statuses AS text[])))
AND (CAST(:f_queues AS text[]) IS NULL OR j.queue = ANY (CAST(:f_queues AS text[])))
-- The same for one queue, said as an equality: PostgreSQL walks an index on
-- (queue, id) in id order for queue = 'x', not for queue = ANY ('{x}'), so a
-- batch of `jobs cancel --queue x` reads its rows and stops (jobs_live_queue_idx).
AND (cardinality(CAST(:f_queues AS text[])) IS DISTINCT FROM 1
     OR j.queue = (CAST(:f_queues AS text[]))[1])
AND (CAST(:f_kinds AS text[]) IS NULL OR j.kind = ANY (CAST(:f_kinds AS text[])))
AND (CAST(:f_tenants AS text[]) IS NULL OR j.tenant_id = ANY (CAST(:f_tenants AS text[])))
AND (CAST(:f_created_since AS timestamptz) IS NULL
     OR j.created_at >= CAST(:f_created_since AS timestamptz))
AND (CAST(:f_finished_since AS timestamptz) IS NULL
     OR j.finished_at >= CAST(:f_finished_since AS timestamptz))
AND (CAST(:f_finished_before AS timestamptz) IS NULL
     OR j.finished_at < CAST(:f_finished_before AS timestamptz))

-- name: statuses_of
SELECT j.id, j.status FROM jobs j WHERE j.id = ANY (CAST(:ids AS bigint[]))

-- name: ids
-- The first :limit matching jobs among :eligible, oldest first (for --limit).
SELECT j.id FROM jobs j
WHERE j.status = ANY (CAST(:eligible AS text[]))
  AND /*job_filter*/
ORDER BY j.id
LIMIT :limit
