-- Reporting a change (reconciler/ops/report.py).

-- name: changed_by_run
-- Which of :ids the run :run_id changed (each change writes an event with its run).
SELECT DISTINCT e.job_id FROM job_events e
WHERE e.job_id = ANY (CAST(:ids AS bigint[])) AND e.run_id = CAST(:run_id AS bigint)
