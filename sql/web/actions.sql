-- The dashboard's actions (reconciler/web/actions.py).

-- name: may_change
-- Whether this database role may do what every action does: change jobs, and
-- record the job_events rows and the runs row. The read-only role may not.
SELECT has_table_privilege('jobs', 'UPDATE')
   AND has_table_privilege('job_events', 'INSERT')
   AND has_table_privilege('runs', 'INSERT') AS may_change

-- name: may_change_table
-- The same for a profile's table (:table_name, schema and table quoted identifiers):
-- change its rows, write the ledger and the runs row.
SELECT has_table_privilege(CAST(:table_name AS text), 'UPDATE')
   AND has_table_privilege('ledger', 'INSERT')
   AND has_table_privilege('runs', 'INSERT') AS may_change
