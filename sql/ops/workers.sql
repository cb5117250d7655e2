-- `reconciler workers`: the workers as the job table sees them (a worker is the
-- locked_by of its running jobs), and the heartbeat budget.
-- The heartbeat rule is sql/heartbeat.sql's (spliced at /*last_seen*/ and
-- /*heartbeat_timeout_s*/), the same as the mark-stale task's: a job is
-- silent past its timeout exactly when mark-stale would take it.
-- Binds: :now, the rule's binds, :interval_s (the heartbeat interval).

-- name: workers
-- A worker is probably dead when every one of its jobs has been silent past its
-- timeout: one live job means the process still heartbeats.
SELECT j.locked_by AS worker,
       count(*) AS running_jobs,
       max(j.locked_at) AS last_claim_at,
       max(/*last_seen*/) AS last_heartbeat_at,
       CAST(:now AS timestamptz) - max(/*last_seen*/) AS silent_for,
       bool_and(/*last_seen*/
                < CAST(:now AS timestamptz) - make_interval(secs => t.timeout_s)) AS probably_dead
FROM jobs j
CROSS JOIN LATERAL (SELECT /*heartbeat_timeout_s*/ AS timeout_s) t
WHERE j.status = 'running'
GROUP BY j.locked_by
ORDER BY probably_dead DESC, running_jobs DESC, worker

-- name: heartbeat_budget
-- Expected heartbeats per minute of the live running jobs, per tenant.
SELECT j.tenant_id,
       count(*) AS running_jobs,
       round(count(*) * 60.0 / CAST(:interval_s AS numeric), 2) AS expected_per_minute
FROM jobs j
CROSS JOIN LATERAL (SELECT /*heartbeat_timeout_s*/ AS timeout_s) t
WHERE j.status = 'running'
  AND /*last_seen*/ >= CAST(:now AS timestamptz) - make_interval(secs => t.timeout_s)
GROUP BY j.tenant_id
ORDER BY expected_per_minute DESC, j.tenant_id NULLS FIRST
