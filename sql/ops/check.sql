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
SELECT count(*) AS jobs
FROM jobs j
WHERE j.status = 'queued'
  AND j.run_at <= CAST(:backlog_horizon AS timestamptz)
  AND NOT EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue IN (j.queue, '*'))

-- name: dead_recent
SELECT count(*) AS jobs
FROM job_events e
WHERE e.to_status = 'dead'
  AND e.at >= CAST(:since AS timestamptz)

-- name: slow
SELECT count(*) AS jobs, min(j.started_at) AS oldest_start, min(j.id) AS example_id
FROM jobs j
WHERE j.status = 'running'
  AND j.started_at < CAST(:slow_horizon AS timestamptz)

-- name: oldest_due_by_priority
SELECT j.priority, count(*) AS due, CAST(:now AS timestamptz) - min(j.run_at) AS oldest_wait
FROM jobs j
WHERE j.status = 'queued'
  AND j.run_at <= CAST(:now AS timestamptz)
  AND NOT EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue IN (j.queue, '*'))
GROUP BY 1
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
