-- The heartbeat rule: one definition of a running job's last sign of life and
-- one resolution of its heartbeat timeout, used by everything that judges a
-- worker (the mark-stale task, `reconciler workers`, `reconciler check`,
-- `reconciler jobs list/show`). reconciler/heartbeat.py splices these in
-- place of the /*last_seen*/ and /*heartbeat_timeout_s*/ markers of a query
-- over jobs aliased j, and makes the binds.

-- name: last_seen
-- The last heartbeat; before the first one, the claim; updated_at only for a
-- row written by hand without either. Deliberately not indexed (heartbeats
-- would then never be HOT updates): mark-stale narrows by claim time instead
-- (jobs_running_since_idx).
coalesce(j.heartbeat_at, j.locked_at, j.updated_at)

-- name: timeout_s
-- Seconds of silence after which the job's worker is presumed dead: the
-- timeout of its kind, else of its queue, else the default.
-- Binds: :default_timeout_s, :kind_names/:kind_timeouts_s,
-- :queue_names/:queue_timeouts_s (RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES).
coalesce(
    (SELECT k.s FROM unnest(CAST(:kind_names AS text[]),
                            CAST(:kind_timeouts_s AS double precision[])) AS k (n, s)
     WHERE k.n = j.kind),
    (SELECT q.s FROM unnest(CAST(:queue_names AS text[]),
                            CAST(:queue_timeouts_s AS double precision[])) AS q (n, s)
     WHERE q.n = j.queue),
    CAST(:default_timeout_s AS double precision)
)
