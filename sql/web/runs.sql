-- The dashboard's task runs page (reconciler/web/data.py): the `runs` history,
-- newest first, per task or all, a keyset page at a time (ids below :before_id);
-- with :profile, only the runs for that profile's table.

-- name: history
SELECT r.id, r.task, r.started_at, r.finished_at, r.status, r.transitions, r.batches,
       r.error, r.host, r.actor,
       r.finished_at - r.started_at AS took
FROM runs r
WHERE (CAST(:task AS text) IS NULL OR r.task = CAST(:task AS text))
  AND (CAST(:before_id AS bigint) IS NULL OR r.id < CAST(:before_id AS bigint))
  AND (CAST(:profile AS text) IS NULL OR r.profile = CAST(:profile AS text))
ORDER BY r.id DESC
LIMIT :limit

-- name: counts
-- Per task since :since: runs by status, for the failures to stand out.
SELECT r.task,
       count(*) AS runs,
       count(*) FILTER (WHERE r.status = 'failed') AS failed,
       count(*) FILTER (WHERE r.status = 'interrupted') AS interrupted,
       max(r.started_at) AS last_started_at
FROM runs r
WHERE r.started_at >= CAST(:since AS timestamptz)
  AND (CAST(:profile AS text) IS NULL OR r.profile = CAST(:profile AS text))
GROUP BY 1
ORDER BY 1
