-- The backup check before a purge of dead jobs (reconciler/ops/backed_up.py).

-- name: not_backed_up
SELECT count(*) AS jobs, min(j.id) AS example_id
FROM jobs j
WHERE j.status = 'dead'
  AND /*job_filter*/
  AND NOT /*backed_up*/
