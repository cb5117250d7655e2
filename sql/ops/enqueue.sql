-- `reconciler enqueue`: jobs added by an operator through the workers' own
-- enqueue() (same defaults, retry policy, idempotency scope and checks), a
-- batch of them per statement. The transaction first sets reconciler.actor
-- and reconciler.run_id, which enqueue() writes into each job's event.
--
-- Binds: one array per argument of enqueue(), element n for job n.

-- name: label
SELECT set_config('reconciler.actor', :actor, true),
       set_config('reconciler.run_id', coalesce(CAST(:run_id AS text), ''), true)

-- name: enqueue
SELECT e.id
FROM unnest(CAST(:kinds AS text[]), CAST(:payloads AS jsonb[]), CAST(:queues AS text[]),
            CAST(:priorities AS integer[]), CAST(:run_ats AS timestamptz[]),
            CAST(:max_attempts AS integer[]), CAST(:keys AS text[]), CAST(:tenants AS text[]))
     WITH ORDINALITY AS x (kind, payload, queue, priority, run_at, max_attempts,
                           idempotency_key, tenant_id, n)
CROSS JOIN LATERAL (
    SELECT enqueue(kind => x.kind, payload => x.payload, queue => x.queue,
                   priority => x.priority, run_at => x.run_at,
                   max_attempts => x.max_attempts, idempotency_key => x.idempotency_key,
                   tenant_id => x.tenant_id) AS id
) e
ORDER BY x.n

-- name: made
-- Which of :ids this transaction created ('new'), and which an idempotency key
-- already had ('existing'). A statement of its own: the enqueue statement's
-- snapshot does not show the rows its function calls inserted.
SELECT j.id,
       CASE WHEN j.xmin = xid(pg_current_xact_id()) THEN 'new' ELSE 'existing' END AS made
FROM jobs j
WHERE j.id = ANY (CAST(:ids AS bigint[]))
ORDER BY j.id
