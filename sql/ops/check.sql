-- `reconciler check`: the runbooks' alert conditions, each one number.
-- Binds: :now, :since (now - the check window) and per query its threshold.
-- Paused queues are left out of backlog and latency: they back up on purpose
-- (a paused_queues row '*' pauses every queue).

-- name: attempts
SELECT count(*) FILTER (WHERE e.to_status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE e.to_status IN ('failed', 'stale')) AS failed
FROM job_events e
WHERE e.from_status = 'running'
  AND e.to_status IN ('succeeded', 'failed', 'stale')
  AND e.at >= CAST(:since AS timestamptz)

-- name: backlog
-- Counted up to :cap (past the critical threshold): a backlog of millions costs
-- what one of :cap does, and the finding reads "over N".
SELECT count(*) AS jobs
FROM (
    SELECT 1
    FROM jobs j
    WHERE j.status = 'queued'
      AND j.run_at <= CAST(:backlog_horizon AS timestamptz)
      AND NOT EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue IN (j.queue, '*'))
    LIMIT :cap
) capped

-- name: dead_recent
SELECT count(*) AS jobs
FROM job_events e
WHERE e.to_status = 'dead'
  AND e.at >= CAST(:since AS timestamptz)

-- name: slow
-- Counted up to :cap, like backlog: a crashed fleet's 300,000 silent jobs must not
-- make monitoring's minute-by-minute check take seconds.
SELECT count(*) AS jobs, min(s.id) AS example_id
FROM (
    SELECT j.id
    FROM jobs j
    WHERE j.status = 'running'
      AND j.started_at < CAST(:slow_horizon AS timestamptz)
    LIMIT :cap
) s

-- name: oldest_due_by_priority
-- Per priority (0 critical .. 4 bulk), walking jobs_claim_idx (priority, run_at)
-- from its oldest due job: the first row read is the oldest, and the due jobs are
-- counted up to :cap, so a deep backlog costs no more than :cap rows a priority.
SELECT p.priority, d.due, CAST(:now AS timestamptz) - d.oldest AS oldest_wait
FROM generate_series(0, 4) p (priority)
CROSS JOIN LATERAL (
    SELECT count(*) AS due, min(x.run_at) AS oldest
    FROM (
        SELECT j.run_at
        FROM jobs j
        WHERE j.status = 'queued'
          AND j.priority = p.priority
          AND j.run_at <= CAST(:now AS timestamptz)
          AND NOT EXISTS (SELECT 1 FROM paused_queues q WHERE q.queue IN (j.queue, '*'))
        ORDER BY j.run_at
        LIMIT :cap
    ) x
) d
WHERE d.due > 0
ORDER BY 1

-- name: events_partitions
-- A partitioned ledger (RECONCILER_EVENTS_PARTITIONING): how far ahead its
-- partitions reach (an event past the last one is refused, with its
-- transition). No row with the plain table. Catalog only.
SELECT max(CAST(substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$TO \('([^']*)'\)$re$)
               AS timestamptz)) AS upper_bound
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass('job_events')
HAVING count(*) > 0
