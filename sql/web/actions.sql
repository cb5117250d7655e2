-- The dashboard's actions (reconciler/web/actions.py).

-- name: may_change
-- Whether this database role may do what every action does: change jobs, and
-- record the job_events rows and the runs row. The read-only role may not.
SELECT has_table_privilege('jobs', 'UPDATE')
   AND has_table_privilege('job_events', 'INSERT')
   AND has_table_privilege('runs', 'INSERT') AS may_change
