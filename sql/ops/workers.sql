-- `reconciler workers`: the workers as the job table sees them (a worker is the
-- locked_by of its running jobs), and the heartbeat budget.
-- Binds: :now, :timeout_s (the heartbeat timeout), :interval_s (heartbeat interval).

-- name: workers
-- A worker is probably dead when every one of its jobs has been silent past the
-- timeout: one live job means the process still heartbeats.
SELECT j.locked_by AS worker,
       count(*) AS running_jobs,
       max(j.locked_at) AS last_claim_at,
       max(coalesce(j.heartbeat_at, j.locked_at)) AS last_heartbeat_at,
       CAST(:now AS timestamptz) - max(coalesce(j.heartbeat_at, j.locked_at)) AS silent_for,
       bool_and(coalesce(j.heartbeat_at, j.locked_at)
                < CAST(:now AS timestamptz)
                  - make_interval(secs => CAST(:timeout_s AS double precision))) AS probably_dead
FROM jobs j
WHERE j.status = 'running'
GROUP BY j.locked_by
ORDER BY probably_dead DESC, running_jobs DESC, worker

-- name: heartbeat_budget
-- Expected heartbeats per minute of the live running jobs, per tenant.
SELECT j.tenant_id,
       count(*) AS running_jobs,
       round(count(*) * 60.0 / CAST(:interval_s AS numeric), 2) AS expected_per_minute
FROM jobs j
WHERE j.status = 'running'
  AND coalesce(j.heartbeat_at, j.locked_at)
      >= CAST(:now AS timestamptz) - make_interval(secs => CAST(:timeout_s AS double precision))
GROUP BY j.tenant_id
ORDER BY expected_per_minute DESC, j.tenant_id NULLS FIRST
